"""Checkpoint selection warm-up: ``AtomicModelCheckpoint(min_epoch=...)`` never keeps an early epoch."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from immunoplex.errors import ConfigError
from immunoplex.training.callbacks import AtomicModelCheckpoint


class ScriptedLoss(L.LightningModule):
    """Trains a linear layer; logs a scripted val/loss per epoch (lowest at epoch 0)."""

    def __init__(self, val_losses: list[float]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.val_losses = val_losses

    def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: list[torch.Tensor], _: int) -> None:
        self.log("val/loss", self.val_losses[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path: Path, losses: list[float], max_epochs: int, min_epoch: int) -> Path:
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    cb = AtomicModelCheckpoint(
        dirpath=tmp_path,
        filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        min_epoch=min_epoch,
    )
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=[cb],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(ScriptedLoss(losses), loader, loader)
    return Path(cb.best_model_path)


LOSSES = [0.10, 0.50, 0.40, 0.30, 0.35, 0.45]


def test_epochs_before_min_epoch_are_never_the_best(tmp_path: Path) -> None:
    assert _fit(tmp_path / "plain", LOSSES, 6, 0).name == "best-epoch000.ckpt"
    best = _fit(tmp_path / "warm", LOSSES, 6, 2)
    assert best.name == "best-epoch003.ckpt" and best.is_file()
    assert sorted(p.name for p in (tmp_path / "warm").glob("*.ckpt")) == ["best-epoch003.ckpt"]


def test_the_last_epoch_is_always_eligible(tmp_path: Path) -> None:
    # min_epoch beyond the run: the last epoch (1) is the best, not "no checkpoint"
    assert _fit(tmp_path, LOSSES, 2, 3).name == "best-epoch001.ckpt"


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_min_epoch_is_checked(bad: object) -> None:
    with pytest.raises(ConfigError, match="min_epoch must be an integer >= 0"):
        AtomicModelCheckpoint(monitor="val/loss", min_epoch=bad)  # type: ignore[arg-type]
