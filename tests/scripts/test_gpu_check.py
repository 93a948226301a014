"""scripts/gpu_check.sh end to end on CPU (``--device cpu --quick``): every step runs and writes
its figures under the output folder, so the prepared GPU check is known to work before a GPU is
lent. No timing is asserted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = {
    "bench2_overhead",
    "bench3_datastall",
    "bench3_datastall_workers4",
    "bench4_twostage",
    "bench5_resnet",
    "bench6_inference",
    "train_bf16_vs_fp32",
    "sync_debug",
    "ddp_devices1",
    "embed_1000_slides",
}


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("IMMUNOPLEX_SKIP_GPU_CHECK") == "1",
    reason="IMMUNOPLEX_SKIP_GPU_CHECK=1: the CPU run of scripts/gpu_check.sh is left out",
)
@pytest.mark.timeout(3600)  # ~35 min under load 15-19 on 2 cores, a few min when idle
def test_gpu_check_cpu_quick(tmp_path: Path, tiny_cohort: Path) -> None:
    cache = tmp_path / "bench"
    shutil.copytree(tiny_cohort, cache / "cohort_tiny")
    (cache / "cohort_tiny" / ".bench_done").write_text("ok\n")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "IMMUNOPLEX_BENCH_DIR": str(cache),
        "PYTHONWARNINGS": "ignore",
    }
    cmd = ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu", "--quick"]
    cmd += ["--out", str(out), "--cache", str(cache)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3500)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").is_file() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:] + log[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "gpu_check.log", "summary.tsv"]
    rows = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()[1:]]
    assert {r[0] for r in rows} == STEPS
    assert all(r[1] == "ok" for r in rows), rows
    figures = {r[0]: r[3] for r in rows}
    assert "overhead=" in figures["bench2_overhead"]
    assert "embed_efficiency=" in figures["bench4_twostage"]
    assert "inference=" in figures["bench6_inference"]
    assert "train_loss_rel_diff=" in figures["train_bf16_vs_fp32"]
    assert "step_syncs=0" in figures["sync_debug"]
    assert "tiles_per_s=" in figures["embed_1000_slides"]
