"""Training callbacks: a ModelCheckpoint whose files are never seen half-written.

Lightning (2.6) writes a checkpoint to a file from ``tempfile.mkstemp()`` (the system temporary
folder) and ``shutil.move``s it to the target. When that folder is on another file system than
the run directory (node-local /tmp, run directory on NFS/Lustre) the move is a *copy*, so a kill
during it leaves a truncated ``last.ckpt`` that a resume would trust. ``AtomicModelCheckpoint``
writes to a temporary sibling of the target (:func:`immunoplex.utils.atomic.atomic_path`) and
renames it, which is atomic on POSIX.
"""

from __future__ import annotations

from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from immunoplex.utils.atomic import atomic_path, fsync_file


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that saves to a unique temporary sibling of the target, then renames.

    Only global rank zero writes (and renames); the other ranks take part in the save call."""

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
