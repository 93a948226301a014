"""bf16 mixed precision, channels_last, gradient accumulation and torch.compile on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from immunoplex.training.checkpoint import load_checkpoint
from immunoplex.training.run import train

from .helpers import compose_train, fast_overrides


def test_bf16_channels_last_accumulation(tiny_cohort: Path, tmp_path: Path) -> None:
    over = fast_overrides(tiny_cohort, epochs=1) + [
        "trainer.precision=bf16-mixed",
        "module.channels_last=true",
        "trainer.accumulate_grad_batches=2",
    ]
    summary = train(compose_train(over, tmp_path))
    ckpt = load_checkpoint(summary["checkpoint"])
    assert ckpt["immunoplex"]["config"]["trainer"]["precision"] == "bf16-mixed"
    assert 0.0 <= summary["test_auroc"] <= 1.0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_torch_compile(tiny_cohort: Path, tmp_path: Path) -> None:
    summary = train(
        compose_train(fast_overrides(tiny_cohort, epochs=1) + ["module.compile=true"], tmp_path)
    )
    # Compiled in place (nn.Module.compile): checkpoint keys stay free of "_orig_mod".
    keys = load_checkpoint(summary["checkpoint"])["state_dict"]
    assert not any("_orig_mod" in k for k in keys)
