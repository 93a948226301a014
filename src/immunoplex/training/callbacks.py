"""Training callbacks: a ModelCheckpoint whose files are never seen half-written, and that can
hold back its choice of "best" until the model has trained a few epochs.

Lightning (2.6) writes a checkpoint to a file from ``tempfile.mkstemp()`` (the system temporary
folder) and ``shutil.move``s it to the target. When that folder is on another file system than
the run directory (node-local /tmp, run directory on NFS/Lustre) the move is a *copy*, so a kill
during it leaves a truncated ``last.ckpt`` that a resume would trust. ``AtomicModelCheckpoint``
writes to a temporary sibling of the target (:func:`immunoplex.utils.atomic.atomic_path`) and
renames it, which is atomic on POSIX.

``min_epoch`` (a warm-up for checkpoint selection, as CLAM's early stopping has a ``stop_epoch``):
epochs before it are never kept as the monitored best. On a few tens of validation patients the
near-untrained model of epoch 0 can have the lowest validation loss while training goes on to learn
(docs/models.md, "Checkpoint selection"). The last epoch is always eligible, so a short run still
has a best checkpoint.
"""

from __future__ import annotations

from typing import Any
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from immunoplex.errors import ConfigError
from immunoplex.utils.atomic import atomic_path, fsync_file


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that saves to a unique temporary sibling of the target, then renames.

    Only global rank zero writes (and renames); the other ranks take part in the save call.
    ``min_epoch``: with a ``monitor``, the 0-based epochs before ``min(min_epoch, max_epochs - 1)``
    are never saved as the best (see the module docstring); ``0`` keeps Lightning's behaviour.
    """

    def __init__(self, *args: Any, min_epoch: int = 0, **kwargs: Any) -> None:
        if isinstance(min_epoch, bool) or not isinstance(min_epoch, int) or min_epoch < 0:
            raise ConfigError(
                f"callbacks.model_checkpoint.min_epoch must be an integer >= 0, got {min_epoch!r}"
            )
        super().__init__(*args, **kwargs)
        self.min_epoch = min_epoch

    def first_eligible_epoch(self, trainer: L.Trainer) -> int:
        """The first (0-based) epoch that may become the monitored best."""
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            return self.min_epoch
        return min(self.min_epoch, max_epochs - 1)

    def _save_monitor_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if trainer.current_epoch < self.first_eligible_epoch(trainer):
            return
        super()._save_monitor_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if trainer.is_global_zero:
            with atomic_path(filepath) as tmp:
                trainer.save_checkpoint(str(tmp), self.save_weights_only)
                fsync_file(tmp)
        else:
            trainer.save_checkpoint(filepath, self.save_weights_only)
        trainer.strategy.barrier()
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
