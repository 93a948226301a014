"""No host-device synchronisation inside training_step / validation_step (issue 19.1).

On CPU nothing waits, so the would-be syncs are counted: the tensor -> Python conversions
(``item``, ``bool``, ``int``, ``float``, ``tolist``, ``numpy``, ``__index__``) are patched and the
aten operations that wait on a GPU (scalar reads, ``nonzero``, boolean-mask indexing, ...) are
watched while the steps run (immunoplex.training.syncs). On CUDA the same run is made under
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from immunoplex.training.run import build
from immunoplex.training.syncs import SyncCounter, watch_steps

from .helpers import compose_train, fast_overrides


def test_counter_sees_syncs() -> None:
    x = torch.arange(6.0)
    with SyncCounter() as c:
        _ = x.sum().item()
        _ = bool(x.any())
        _ = x[x > 2]
        _ = x.tolist()
        _ = (x * 2).clamp_min(1).sum()
    assert c.counts["Tensor.item"] == 1
    assert c.counts["Tensor.__bool__"] == 1
    assert c.counts["Tensor.tolist"] == 1
    assert c.counts["aten::index[bool mask]"] == 1
    assert c.total >= 5
    with SyncCounter() as c:
        _ = (x * 2).clamp_min(1).sum() / (x > 2).float().sum().clamp_min(1)
    assert c.total == 0
    assert torch.Tensor.__dict__.get("__bool__") is None  # patches undone


def _fit_counting(
    tiny_cohort: Path, tmp_path: Path, over: list[str], sync_debug: bool
) -> SyncCounter:
    cfg = compose_train(fast_overrides(tiny_cohort, epochs=2) + over, tmp_path)
    dm, module, trainer = build(cfg)
    counter = watch_steps(module, sync_debug=sync_debug)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step > 0
    assert counter.calls >= trainer.global_step  # the steps really ran inside the counter
    assert "train/auroc" in trainer.callback_metrics and "val/auroc" in trainer.callback_metrics
    return counter


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_steps_do_not_sync_cpu(tiny_cohort: Path, tmp_path: Path, precision: str) -> None:
    over = ["callbacks=none", "logger=csv", f"trainer.precision={precision}"]
    counter = _fit_counting(tiny_cohort, tmp_path, over, sync_debug=False)
    assert counter.total == 0, dict(counter.counts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_steps_do_not_sync_cuda(tiny_cohort: Path, tmp_path: Path) -> None:
    over = ["callbacks=none", "trainer=gpu", "trainer.max_epochs=2", "data.num_workers=0"]
    counter = _fit_counting(tiny_cohort, tmp_path, over, sync_debug=True)
    assert counter.total == 0, dict(counter.counts)
