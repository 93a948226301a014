"""The Hydra app and the settings resolution (every size preset is exercised)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from immunoplex.errors import ConfigError
from immunoplex.paths import config_dir
from immunoplex.synth.settings import resolve_settings


@pytest.mark.parametrize("size", ["tiny", "small", "default", "large"])
def test_every_size_composes(size):
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("synth", overrides=[f"size={size}", "out_dir=/tmp/x"])
    s = resolve_settings(cfg.size, cfg)
    assert s["size"] == size
    assert s["n_patients"] == cfg.sizes[size].n_patients
    assert s["slide_px"] == cfg.sizes[size].slide_px
    assert len(s["image"]["panel"]) == 7


def test_sizes_are_ordered():
    n = [resolve_settings(k)["n_patients"] for k in ("tiny", "small", "default", "large")]
    assert n == sorted(n) and n[0] <= 30 and 300 <= n[2] <= 500 and n[3] >= 1000


def test_overrides_and_knobs():
    s = resolve_settings("tiny", overrides={"n_patients": 9, "truth.effects.intercept": -2.0})
    assert s["n_patients"] == 9 and s["truth"]["effects"]["intercept"] == -2.0
    cfg = OmegaConf.load(config_dir() / "synth.yaml")
    cfg.pop("hydra")
    cfg.pop("defaults")
    cfg.slide_px = 320
    assert resolve_settings("tiny", cfg)["slide_px"] == 320
    with pytest.raises(ConfigError, match="unknown"):
        resolve_settings("huge")
    with pytest.raises(ConfigError):
        resolve_settings("tiny", overrides={"sites.site_A": [1.0, 1.0]})


def _run_cli(args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "immunoplex.cli.synth", *args],
        cwd=cwd, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def test_cli_writes_cohort_and_no_hydra_litter(tmp_path: Path):
    out = tmp_path / "cohort"
    proc = _run_cli(
        [f"out_dir={out}", "size=tiny", "seed=2", "workers=1", "progress=false", "n_patients=5"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "auroc_bayes_population" in proc.stdout
    assert (out / "manifest.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]  # cwd untouched
    litter = [p for p in out.rglob("*") if p.name in (".hydra", "outputs") or p.suffix == ".log"]
    assert litter == []


def test_cli_missing_out_dir_is_a_clean_error(tmp_path: Path):
    proc = _run_cli(["size=tiny"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: out_dir: a value is required")
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
