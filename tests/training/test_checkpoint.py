import os
from pathlib import Path

import pytest
import torch

from immunoplex.errors import CheckpointError
from immunoplex.training.checkpoint import (
    atomic_save,
    build_model,
    check_targets,
    load_checkpoint,
)


class _Exploit:
    """Pickling this object makes unpickling run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "immunoplex": {}, "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.ckpt: refused or unreadable checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_foreign_target_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.ckpt"
    meta = {"model": {"_target_": "os.system", "command": "echo hi"}, "dims": {}}
    torch.save({"state_dict": {}, "immunoplex": meta}, path)
    with pytest.raises(CheckpointError, match="_target_ 'os.system' is not an immunoplex class"):
        load_checkpoint(path)
    nested = {
        "_target_": "immunoplex.models.response_model.ResponseModel",
        "encoder": {"_target_": "subprocess.call", "_partial_": True},
    }
    with pytest.raises(CheckpointError, match="model.encoder: _target_ 'subprocess.call'"):
        check_targets(nested)
    with pytest.raises(CheckpointError):
        build_model(nested, {})


def test_not_an_immunoplex_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not an immunoplex checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.ckpt")
    (tmp_path / "trunc.ckpt").write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="trunc.ckpt: refused or unreadable"):
        load_checkpoint(tmp_path / "trunc.ckpt")


def test_atomic_save_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "a.ckpt"
    atomic_save({"x": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["x"].sum() == 3

    class Unsaveable:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save({"x": Unsaveable()}, target)
    assert torch.load(target, weights_only=True)["x"].sum() == 3  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]
