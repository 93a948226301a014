"""immunoplex-eval: the shipped config composes and runs; errors print one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir

from immunoplex.cli.eval import run
from immunoplex.paths import config_dir


def test_eval_config_composes_and_runs(tmp_path: Path, predictions: pd.DataFrame) -> None:
    csv = tmp_path / "preds.csv"
    predictions.to_csv(csv, index=False)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"predictions={csv}",
                f"out_dir={tmp_path / 'out'}",
                "n_boot=30",
                "roc_band_boot=5",
                "group_by=[cohort]",
                "threshold=0.4",
            ],
        )
    res = run(cfg)
    assert res["settings"]["threshold"] == 0.4
    assert list(res["groups"]) == ["cohort"]
    assert (tmp_path / "out" / "report.html").is_file()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "immunoplex.cli.eval", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,label,probability\nP1,1,0.5\nP1,0,0.3\n")
    proc = _cli(f"predictions={bad}", f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {bad}: row 2: duplicated patient_id 'P1' (first at row 1)\n"

    proc = _cli(f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: predictions: a value is required")
