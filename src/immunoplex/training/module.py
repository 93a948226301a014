"""The LightningModule: loss, metrics per stage, optimisers, and the checkpoint payload."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchmetrics import SumMetric

from immunoplex.data.cohort import LABEL_NAMES
from immunoplex.data.transforms import AugmentConfig, augment_tiles, normalise_tiles
from immunoplex.training.checkpoint import build_model
from immunoplex.training.metrics import response_metrics
from immunoplex.training.schema import CheckpointMeta, is_panel_agnostic, read_meta, write_meta
from immunoplex.training.survival_fit import SurvivalLoss


def _plain(node: Any) -> Any:
    """OmegaConf nodes -> plain containers (checkpoints must load with weights_only=True)."""
    if node is None or isinstance(node, str | int | float | bool):
        return node
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node


class ResponseModule(L.LightningModule):
    """Trains a ResponseModel on patient bags; logs train/…, val/…, test/… metrics."""

    def __init__(
        self,
        model: Mapping[str, Any],
        dims: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        pos_weight: float = 1.0,
        threshold: float = 0.5,
        augment: Mapping[str, Any] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        seed: int = 0,
        metadata: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        task: str = "binary",
        survival: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {
                "model": _plain(model),
                "dims": _plain(dims),
                "optimizer": _plain(optimizer),
                "scheduler": _plain(scheduler),
                "pos_weight": float(pos_weight),
                "threshold": float(threshold),
                "augment": _plain(augment) or {},
                "channels_last": bool(channels_last),
                "compile": bool(compile),
                "seed": int(seed),
                "task": str(task),
                "survival": _plain(survival) or {},
            }
        )
        self.survival_loss = SurvivalLoss(str(task), self.hparams["survival"])
        self.metadata = _plain(metadata) or {}
        self.config = _plain(config) or {}
        self.calibration: dict[str, Any] | None = None
        self.model = build_model(self.hparams["model"], self.hparams["dims"])
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            if hasattr(self.model, "channels_last"):  # its tile batches too, not only weights
                self.model.channels_last = True
        self.augment_cfg = AugmentConfig(**self.hparams["augment"])
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight)), persistent=False)
        self.train_metrics = response_metrics("train/", threshold)
        self.val_metrics = response_metrics("val/", threshold)
        self.test_metrics = response_metrics("test/", threshold)
        # Patients scored per stage, summed over DDP ranks: proves none is counted twice.
        self.patient_counts = torch.nn.ModuleDict(
            {f"n_{s}": SumMetric() for s in ("train", "val", "test")}
        )
        self._generator: torch.Generator | None = None
        # Per stage, the epoch's detached (probabilities, labels); metrics are updated at its end.
        self._epoch_outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    # ---- inputs --------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.hparams["compile"] and not getattr(self, "_compiled", False):
            self.model.compile()
            self._compiled = True

    def _step_seed(self, batch_idx: int) -> int:
        return (
            (self.hparams["seed"] * 1_000_003 + self.current_epoch * 10_007 + batch_idx)
            * (self.global_rank + 1)
            % (2**63 - 1)
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout and augmentation draw from RNGs re-seeded per step: a resumed run replays the
        # same randomness as an uninterrupted one.
        seed = self._step_seed(batch_idx)
        torch.manual_seed(seed)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        self._generator = gen

    def prepare_batch(self, batch: dict[str, torch.Tensor], train: bool) -> dict[str, Any]:
        """Normalise (and while training, augment) uint16 tiles on the device."""
        if "tiles" not in batch:
            return batch
        x = normalise_tiles(batch)
        channel_mask = batch["channel_mask"]
        if train and self._generator is not None:
            x, channel_mask = augment_tiles(
                x, batch["tile_mask"], channel_mask, self.augment_cfg, self._generator
            )
        out = dict(batch)
        out["tiles"] = x
        out["channel_mask"] = channel_mask
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(batch)

    # ---- steps ---------------------------------------------------------------------------
    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        batch = self.prepare_batch(batch, train=stage == "train")
        out = self(batch)
        logit = out["logit"].float()
        label = batch["label"]
        labelled = label >= 0
        # Unlabelled patients carry no loss; a masked mean needs no host-device sync.
        weight = labelled.to(logit.dtype)
        per_patient = F.binary_cross_entropy_with_logits(
            logit, label.clamp(min=0), pos_weight=self.pos_weight, reduction="none"
        )
        loss = (per_patient * weight).sum() / weight.sum().clamp(min=1.0)
        loss = self.survival_loss(loss, out, batch, stage)  # task=binary: unchanged
        if not self.survival_loss.trains_response:  # task=survival: no response metrics
            label = torch.full_like(label, -1.0)
        penalty = getattr(self.model, "penalty", None)
        if stage == "train" and callable(penalty):  # e.g. the feature model's L2 terms
            loss = loss + penalty()
        # Metrics see the epoch's probabilities once, at its end: selecting the labelled patients
        # (a boolean index) and torchmetrics' argument checks would each sync every step.
        self._epoch_outputs.setdefault(stage, []).append(
            (torch.sigmoid(logit.detach()), label.detach())
        )
        self.log(
            f"{stage}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            batch_size=len(label),
            sync_dist=True,
            prog_bar=stage != "test",
        )
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def _update_metrics(self, stage: str) -> None:
        """Feed the epoch's labelled (probability, label) pairs to the stage's metrics."""
        outputs = self._epoch_outputs.pop(stage, [])
        if not outputs:
            return
        prob = torch.cat([p for p, _ in outputs])
        label = torch.cat([y for _, y in outputs])
        labelled = label >= 0
        if labelled.any():
            metrics = {"train": self.train_metrics, "val": self.val_metrics}
            metrics["test"] = self.test_metrics
            metrics[stage].update(prob[labelled], label[labelled].long())
            self.patient_counts[f"n_{stage}"].update(labelled.sum())

    def _log_metrics(self, stage: str) -> None:
        c_index = self.survival_loss.epoch_c_index(stage)
        if c_index is not None:
            self.log(f"{stage}/c_index", c_index, prog_bar=stage != "test")
        self._update_metrics(stage)
        metrics = {"train": self.train_metrics, "val": self.val_metrics, "test": self.test_metrics}
        coll = metrics[stage]
        if all(m.update_count == 0 for m in coll.values(copy_state=False)):
            return
        self.log(f"{stage}/n_patients", self.patient_counts[f"n_{stage}"].compute())
        self.patient_counts[f"n_{stage}"].reset()
        values = coll.compute()
        auroc = values.pop(f"{stage}/auroc")
        self.log_dict(values, prog_bar=False)
        self.log(f"{stage}/auroc", auroc, prog_bar=stage != "test")
        coll.reset()

    def on_train_epoch_start(self) -> None:
        self._epoch_outputs.pop("train", None)

    def on_validation_epoch_start(self) -> None:
        self._epoch_outputs.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._epoch_outputs.pop("test", None)

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    # ---- optimisation --------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        opt_factory = instantiate(OmegaConf.create(self.hparams["optimizer"]))
        optimizer = opt_factory(params=[p for p in self.parameters() if p.requires_grad])
        sched_cfg = self.hparams["scheduler"]
        if not sched_cfg:
            return optimizer
        sched_cfg = dict(sched_cfg)
        interval = sched_cfg.pop("interval", "epoch")
        monitor = sched_cfg.pop("monitor", "val/loss")
        scheduler = instantiate(OmegaConf.create(sched_cfg))(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval, "monitor": monitor},
        }

    # ---- checkpoint payload --------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = CheckpointMeta(
            model=self.hparams["model"],
            dims=self.hparams["dims"],
            data=self.metadata,
            config=self.config,
            label_names=list(LABEL_NAMES),
            threshold=float(self.hparams["threshold"]),
            calibration=self.calibration,
            panel_agnostic=is_panel_agnostic(self.model),
        )
        write_meta(checkpoint, meta)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "immunoplex" not in checkpoint:
            return
        meta = read_meta(checkpoint)
        self.calibration = meta.calibration
        self.metadata = meta.data or self.metadata
        self.config = meta.config or self.config
