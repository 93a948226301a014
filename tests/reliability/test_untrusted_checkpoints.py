"""Issue 9.3: a checkpoint from elsewhere never runs code; only project classes are rebuilt.

tests/training/test_checkpoint.py covers a malicious pickle, a foreign ``_target_`` in the model
(top level and nested dict) and non-immunoplex files. This adds: ``_target_``s inside lists,
``_target_``s in sections nothing instantiates (data, config), malformed sections, and a check
that every code path in ``src/`` that reads a checkpoint does so without unpickling objects.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from immunoplex.errors import CheckpointError
from immunoplex.paths import config_dir
from immunoplex.training.checkpoint import build_model, load_checkpoint, model_from_checkpoint

SRC = Path(__file__).resolve().parents[2] / "src" / "immunoplex"
DIMS = {
    "n_channels": 3,
    "markers": ["DAPI", "PanCK", "CD8"],
    "n_genes": 4,
    "gene_names": ["CD8A", "GZMA", "CXCL9", "STAB1"],
    "n_clinical": 0,
    "treatments": ["anti-PD-1"],
}


def _model_cfg() -> dict[str, Any]:
    cfg = OmegaConf.to_container(OmegaConf.load(config_dir() / "model" / "mean_mil.yaml"))
    assert isinstance(cfg, dict)
    cfg["use_clinical"] = False
    return cfg


def _checkpoint(tmp: Path, **meta_updates: Any) -> tuple[Path, torch.nn.Module]:
    """A genuine small immunoplex checkpoint (optionally with doctored metadata)."""
    torch.manual_seed(0)
    model = build_model(_model_cfg(), DIMS)
    meta: dict[str, Any] = {"schema_version": 1, "model": _model_cfg(), "dims": DIMS}
    meta.update(meta_updates)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp / "model.ckpt"
    torch.save({"state_dict": state, "immunoplex": meta}, path)
    return path, model


def test_genuine_checkpoint_round_trips(tmp_path: Path) -> None:
    path, model = _checkpoint(tmp_path)
    rebuilt = model_from_checkpoint(load_checkpoint(path))
    for (k, a), b in zip(model.state_dict().items(), rebuilt.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize(
    ("model_cfg", "where"),
    [
        (
            {
                "_target_": "immunoplex.models.response_model.ResponseModel",
                "hooks": [{"_target_": "os.system", "command": "true"}],
            },
            "model.hooks[0]",
        ),
        (
            {
                "_target_": "immunoplex.models.response_model.ResponseModel",
                "a": [[{"b": {"_target_": "builtins.exec"}}]],
            },
            "model.a[0][0].b",
        ),
        ({"_target_": "immunoplexevil.run"}, "model"),  # prefix must be the package, with a dot
        ({"_target_": "torch.hub.load"}, "model"),
    ],
)
def test_foreign_targets_anywhere_in_the_model_are_refused(
    tmp_path: Path, model_cfg: dict[str, Any], where: str
) -> None:
    path, _ = _checkpoint(tmp_path, model=model_cfg)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert f"{path}: {where}: _target_" in msg and "refusing" in msg and "\n" not in msg


def test_targets_in_data_and_config_sections_are_never_instantiated(tmp_path: Path) -> None:
    """Training configs legitimately name torch classes; nothing at inference builds them."""
    marker = tmp_path / "pwned"
    evil = {"_target_": "os.system", "command": f"touch {marker}"}
    path, model = _checkpoint(tmp_path, data={"panel": evil}, config={"optimizer": evil})
    rebuilt = model_from_checkpoint(load_checkpoint(path))
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(
        p.numel() for p in model.parameters()
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"state_dict": {}, "immunoplex": "not a dict"}, "'immunoplex' section is not a mapping"),
        ({"state_dict": {}, "immunoplex": {"model": "os.system", "dims": {}}}, "model config"),
        ({"state_dict": {}, "immunoplex": {"model": ["x"], "dims": {}}}, "model config"),
        ({"state_dict": {}, "immunoplex": {"model": {"name": "x"}, "dims": {}}}, "_target_"),
        (
            {"state_dict": [], "immunoplex": {"model": {"_target_": "immunoplex.x"}, "dims": {}}},
            "state_dict",
        ),
        (
            {"state_dict": {}, "immunoplex": {"model": {"_target_": "immunoplex.x"}, "dims": 3}},
            "dims",
        ),
    ],
)
def test_malformed_sections_are_checkpoint_errors(
    tmp_path: Path, payload: dict[str, Any], reason: str
) -> None:
    path = tmp_path / "odd.ckpt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: ") and reason in str(err.value)


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    path, _ = _checkpoint(tmp_path, dims={**DIMS, "n_genes": 7, "gene_names": list("abcdefg")})
    with pytest.raises(CheckpointError, match="do not fit the model"):
        model_from_checkpoint(load_checkpoint(path))


def test_every_checkpoint_read_in_src_is_weights_only() -> None:
    """Static audit: torch.load only with weights_only=True, no Lightning load_from_checkpoint,
    resume (trainer.fit with ckpt_path) with weights_only=True, no pickle/joblib/np allow_pickle."""
    calls: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(SRC).as_posix()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            calls.append(rel)
            assert "weights_only=True" in m.group(1), f"{rel}: torch.load without weights_only"
        assert "load_from_checkpoint" not in text, rel
        assert not re.search(r"^\s*(import pickle|import joblib|import dill)", text, re.M), rel
        assert "allow_pickle=True" not in text, rel
        for line in text.splitlines():
            if "trainer.fit(" in line and "ckpt_path" in line:
                assert "weights_only=True" in line, f"{rel}: resume may unpickle"
    # Inference reads go through load_checkpoint; the only other read is pretrained weights.
    assert sorted(set(calls)) == ["models/encoders.py", "training/checkpoint.py"]
    for rel in ("inference/predictor.py", "training/embed.py"):
        text = (SRC / rel).read_text()
        assert "load_checkpoint(" in text and "torch.load" not in text, rel


def test_pretrained_weights_file_with_pickle_payload_is_refused(tmp_path: Path) -> None:
    from immunoplex.errors import ConfigError
    from immunoplex.models.encoders import _load_state_dict_file

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Exploit()}, path)
    with pytest.raises(ConfigError, match="cannot read pretrained weights"):
        _load_state_dict_file(path)
    assert not marker.exists()
