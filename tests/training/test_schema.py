"""``training.schema``: the checkpoint schema written and read in one place."""

from __future__ import annotations

import pytest

from immunoplex.errors import CheckpointError
from immunoplex.training.checkpoint import SCHEMA_VERSION
from immunoplex.training.schema import CheckpointMeta, read_meta, set_calibration, write_meta


def test_round_trip_and_calibration() -> None:
    ckpt: dict = {}
    meta = CheckpointMeta(model={"_target_": "immunoplex.x"}, threshold=0.4, panel_agnostic=True)
    write_meta(ckpt, meta)
    set_calibration(ckpt, {"temperature": 2.0})
    back = read_meta(ckpt)
    assert back.schema_version == SCHEMA_VERSION and "torch" in back.versions
    assert back.threshold == 0.4 and back.panel_agnostic is True
    assert back.calibration == {"temperature": 2.0}


def test_older_checkpoints_get_defaults_and_newer_are_refused() -> None:
    old = read_meta({"immunoplex": {"model": {"_target_": "immunoplex.x"}}})
    assert old.label_names == ["non-responder", "responder"] and old.threshold == 0.5
    assert old.panel_agnostic is None and old.calibration is None and old.data == {}
    with pytest.raises(CheckpointError, match="newer than this immunoplex"):
        read_meta({"immunoplex": {"schema_version": SCHEMA_VERSION + 1}}, "m.ckpt")
    with pytest.raises(CheckpointError, match="m.ckpt: not an immunoplex checkpoint"):
        read_meta({}, "m.ckpt")
