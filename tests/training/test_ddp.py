"""DDP with two CPU processes (gloo): metrics synchronised, no patient counted twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ddp_cpu_two_processes(tiny_cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "immunoplex.cli.train",
        f"data.root={tiny_cohort}",
        f"data.cache_dir={tiny_cohort}/cache",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "callbacks=none",
        "data.prep_workers=1",
        f"hydra.run.dir={run}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=850)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out (test) AUROC" in proc.stdout
    metrics = pd.read_csv(run / "logs" / "metrics.csv")
    val = metrics.dropna(subset=["val/auroc"]).iloc[-1]
    preds = pd.read_csv(run / "predictions_val.csv")
    # Every validation patient counted exactly once over both ranks.
    assert int(val["val/n_patients"]) == len(preds) == preds["patient_id"].nunique()
    # The logged metric is the all-rank AUROC, not rank zero's half.
    assert val["val/auroc"] == pytest.approx(
        roc_auc_score(preds["label"], preds["logit"]), abs=1e-5
    )
