"""Training callbacks: a ModelCheckpoint whose files are never seen half-written.

Lightning (2.6) writes a checkpoint to a file from ``tempfile.mkstemp()`` (the system temporary
folder) and ``shutil.move``s it to the target. When that folder is on another file system than
the run directory (node-local /tmp, run directory on NFS/Lustre) the move is a *copy*, so a kill
during it leaves a truncated ``last.ckpt`` that a resume would trust. ``AtomicModelCheckpoint``
writes to a temporary sibling of the target and ``os.replace``s it, which is atomic on POSIX.
"""

from __future__ import annotations

import os
from pathlib import Path
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that saves to ``.<name>.<pid>.tmp`` next to the target, then renames."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        target = Path(filepath)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            trainer.save_checkpoint(str(tmp), self.save_weights_only)
            if trainer.is_global_zero and tmp.exists():
                _fsync_file(str(tmp))
                os.replace(tmp, target)
        finally:
            if trainer.is_global_zero:
                tmp.unlink(missing_ok=True)
        trainer.strategy.barrier()
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
