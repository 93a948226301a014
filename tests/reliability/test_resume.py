"""Issue 9.2: training SIGKILLed mid-run resumes from its checkpoints.

What is guaranteed (and measured here, on the tiny synthetic cohort, 2 training steps/epoch):

* resuming from an end-of-epoch checkpoint (``checkpoints/last.ckpt`` with the default callbacks)
  ends bit-identical to the uninterrupted run with the same seed: weights (tolerance 1e-6 absolute,
  observed 0.0), validation metrics and test AUROC. The per-step RNG re-seeding in
  ``ResponseModule`` and the (seed, epoch)-seeded ``PatientSampler`` make this hold.
* resuming from a mid-epoch checkpoint (``every_n_train_steps``) continues the run to the same
  number of steps and epochs, but is NOT identical: Lightning cannot fast-forward our (not
  stateful) training DataLoader, so the interrupted epoch restarts its patient order from the
  first batch while the batch counter continues (some patients are seen twice in that epoch,
  others not at all). The next epochs are unaffected in their order but start from other weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DRIVER = Path(__file__).with_name("train_driver.py")
EPOCHS = 2
TOL = 1e-6


def _run(cohort: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(DRIVER), str(cohort), str(out), "--epochs", str(EPOCHS), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _summary(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("SUMMARY ")][-1]
    return json.loads(line[len("SUMMARY ") :])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in ckpt["state_dict"].items() if v.is_floating_point()}


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_then_resume(tiny_cohort: Path, tmp_path: Path) -> None:
    ref = _summary(_run(tiny_cohort, tmp_path / "ref", "--step-checkpoints", "1"))

    killed = tmp_path / "killed"
    proc = _run(tiny_cohort, killed, "--step-checkpoints", "1", "--kill-at-step", "3")
    assert proc.returncode == -9, proc.stderr[-3000:]  # SIGKILL: no clean shutdown at all
    ckpts = killed / "checkpoints"
    # Every checkpoint under a final name is complete (a SIGKILL may only leave hidden temps).
    for final in (p for p in ckpts.glob("*.ckpt") if not p.name.startswith(".")):
        torch.load(final, map_location="cpu", weights_only=True)
    at_kill = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert (at_kill["epoch"], at_kill["global_step"]) == (0, 2)  # end of epoch 0
    mid = torch.load(ckpts / "step-latest.ckpt", map_location="cpu", weights_only=True)
    assert (mid["epoch"], mid["global_step"]) == (1, 3)  # one batch into epoch 1

    mid_run = tmp_path / "mid"
    shutil.copytree(killed, mid_run)

    # End-of-epoch resume: identical to the uninterrupted run.
    resumed = _summary(_run(tiny_cohort, killed, "--resume", str(ckpts / "last.ckpt")))
    assert _max_diff(tmp_path / "ref" / "checkpoints" / "last.ckpt", ckpts / "last.ckpt") <= TOL
    for key, value in ref["metrics"].items():
        if key.startswith("val/"):
            assert resumed["metrics"][key] == pytest.approx(value, abs=TOL), key
    assert resumed["test_auroc"] == ref["test_auroc"]
    assert resumed["val_auroc"] == ref["val_auroc"]

    # Mid-epoch resume: the run completes with the same step count (not bit-identical, above).
    step_ckpt = mid_run / "checkpoints" / "step-latest.ckpt"
    _summary(_run(tiny_cohort, mid_run, "--step-checkpoints", "1", "--resume", str(step_ckpt)))
    # Lightning cannot restore a plain DataLoader's position inside an epoch: the resumed run
    # finishes the interrupted epoch with however many batches its loop believes are left.
    final = torch.load(step_ckpt, map_location="cpu", weights_only=True)
    assert final["epoch"] == EPOCHS - 1 and final["global_step"] >= mid["global_step"]
    assert all(torch.isfinite(w).all() for w in _weights(step_ckpt).values())
