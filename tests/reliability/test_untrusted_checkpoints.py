"""Issues 9.3 and 14.1: a checkpoint from elsewhere never runs code; only registry classes are built.

tests/training/test_checkpoint.py covers a malicious pickle, a foreign ``_target_`` in the model
(top level and nested dict), non-immunoplex files, the registry itself and old checkpoints. This
adds: ``_target_``s inside lists, ``_target_``s in sections nothing instantiates (data, config),
malformed sections, a check that every code path in ``src/`` that reads a checkpoint does so
without unpickling objects, and (issue 14.1) planted targets that a prefix allow-list let through
(package functions that write files, imported attributes, attribute walks from a registry class,
``_args_``/``_partial_`` tricks), nested under every sub-model, refused with one line and nothing
written: through ``load_checkpoint``, ``build_model``, the embed encoder checkpoint, the predict
CLI, and the saved expression models.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
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


@functools.cache
def _composed(name: str) -> dict[str, Any]:
    """``cfg.model`` of ``train model=name`` (model configs compose from groups)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(model, dict)
    return model


def _model_cfg(name: str = "mean_mil") -> dict[str, Any]:
    cfg = copy.deepcopy(_composed(name))
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
    assert msg.startswith(f"{path}: {where}._target_ '") and "\n" not in msg
    assert msg.endswith("is not a registered model class")


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
    genes = [*DIMS["gene_names"], "E", "F", "G"]  # 7 genes for weights of 4
    path, _ = _checkpoint(tmp_path, dims={**DIMS, "n_genes": 7, "gene_names": genes})
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
        assert not re.search(r"^\s*(import joblib|import dill)", text, re.M), rel
        assert not re.search(r"\b(pickle|cPickle)\.(load|loads|Unpickler)\b", text), rel
        assert "allow_pickle=True" not in text, rel
        for line in text.splitlines():
            if "trainer.fit(" in line and "ckpt_path" in line:
                assert "weights_only=True" in line, f"{rel}: resume may unpickle"
    # Inference reads go through load_checkpoint; the only other read is pretrained weights.
    # (cli/checks.py probes a resume checkpoint before training; pickle only for its error type)
    assert sorted(set(calls)) <= ["cli/checks.py", "models/encoders.py", "training/checkpoint.py"]
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


# ---- issue 14.1: planted targets that a prefix allow-list let through -----------------------

MULTI = "multimodal"  # has encoder, aggregator, expression_encoder and fusion


def _payloads(marker: Path) -> dict[str, tuple[dict[str, Any], str, str]]:
    """name -> (planted node, where the error points below the node, what it names)."""
    write = {"_target_": "immunoplex.utils.atomic.write_text", "path": str(marker), "text": "x"}
    return {
        "package_function_writes_a_file": (
            write,
            "._target_",
            "immunoplex.utils.atomic.write_text",
        ),
        "partial_package_function": ({**write, "_partial_": True}, "._target_", "write_text"),
        "generate_cohort": (
            {"_target_": "immunoplex.synth.cohort.generate_cohort", "out_dir": str(marker)},
            "._target_",
            "generate_cohort",
        ),
        "imported_attribute": (
            {"_target_": "immunoplex.tiles.cache.Path.touch", "_args_": [str(marker)]},
            "._target_",
            "immunoplex.tiles.cache.Path.touch",
        ),
        "os_system": (
            {"_target_": "os.system", "command": f"touch {marker}"},
            "._target_",
            "'os.system'",
        ),
        "builtins_eval": (
            {"_target_": "builtins.eval", "_args_": [f"open({str(marker)!r}, 'w')"]},
            "._target_",
            "'builtins.eval'",
        ),
        "attribute_walk_from_a_registry_class": (
            {"_target_": "immunoplex.models.encoders.SmallCNN.__init__", "self": str(marker)},
            "._target_",
            "SmallCNN.__init__",
        ),
        "registry_module_path_not_a_class": (
            {"_target_": "immunoplex.models.encoders", "_partial_": True},
            "._target_",
            "'immunoplex.models.encoders'",
        ),
        "registry_class_with_planted_args": (
            {
                "_target_": "immunoplex.models.encoders.SmallCNN",
                "_partial_": True,
                "_args_": [write],
            },
            "._args_[0]._target_",
            "write_text",
        ),
        "partial_names_a_function": (
            {"_target_": "immunoplex.models.encoders.SmallCNN", "_partial_": write["_target_"]},
            "._partial_",
            "write_text",
        ),
        "args_is_a_string": (
            {"_target_": "immunoplex.models.encoders.SmallCNN", "_args_": str(marker)},
            "._args_",
            "must be a list",
        ),
        "target_is_not_a_string": (
            {"_target_": [write["_target_"]], "path": str(marker)},
            "._target_",
            "write_text",
        ),
        "unknown_hydra_key": (
            {"_target_": "immunoplex.models.encoders.SmallCNN", "_set_": write},
            "._set_",
            "is not allowed",
        ),
        "recursive_off": (
            {"_target_": "immunoplex.models.encoders.SmallCNN", "_recursive_": False},
            "._recursive_",
            "must be true",
        ),
    }


PAYLOADS = sorted(_payloads(Path("x")))


def _plant(cfg: dict[str, Any], place: str, node: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``cfg`` with ``node`` planted at ``place``; returns it and the error's location."""
    if place == "top":
        return copy.deepcopy(node), "model"
    if place == "list":
        cfg["expression_encoder"]["hidden_dims"] = [128, node]
        return cfg, "model.expression_encoder.hidden_dims[1]"
    if place == "deep":  # a plain mapping and a list between the sub-model and the node
        cfg["fusion"]["extra"] = {"hooks": [{"inner": node}]}
        return cfg, "model.fusion.extra.hooks[0].inner"
    cfg[place] = node
    return cfg, f"model.{place}"


PLACES = ["top", "encoder", "aggregator", "expression_encoder", "fusion", "list", "deep"]


@functools.cache
def _genuine_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(_model_cfg(MULTI), DIMS)
    return {f"model.{k}": v for k, v in model.state_dict().items()}


def _planted_checkpoint(tmp: Path, model_cfg: dict[str, Any], **meta: Any) -> Path:
    path = tmp / "planted.ckpt"
    payload = {"schema_version": 1, "model": model_cfg, "dims": DIMS, **meta}
    torch.save({"state_dict": _genuine_state(), "immunoplex": payload}, path)
    return path


def _assert_one_line(msg: str, start: str, names: str) -> None:
    assert msg.startswith(start), msg
    assert "\n" not in msg and "\r" not in msg and names in msg, msg


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("place", PLACES)
def test_planted_target_is_refused_and_nothing_is_written(
    tmp_path: Path, place: str, payload: str
) -> None:
    marker = tmp_path / "planted" / "pwned.pth"
    node, below, names = _payloads(marker)[payload]
    cfg, where = _plant(_model_cfg(MULTI), place, node)
    path = _planted_checkpoint(tmp_path, cfg)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _assert_one_line(str(err.value), f"{path}: {where}{below}", names)
    if below == "._target_" and payload != "target_is_not_a_string":
        assert str(err.value).endswith("is not a registered model class")
    # every other entry point that builds from file data refuses it too
    raw = torch.load(path, weights_only=True)
    with pytest.raises(CheckpointError) as err:
        model_from_checkpoint(raw, path)  # skipping load_checkpoint's own check
    _assert_one_line(str(err.value), f"{path}: {where}{below}", names)
    with pytest.raises(CheckpointError) as err:
        build_model(cfg, DIMS)
    _assert_one_line(str(err.value), f"{where}{below}", names)
    assert not marker.exists() and not marker.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["planted.ckpt"]


@pytest.mark.parametrize("payload", ["package_function_writes_a_file", "imported_attribute"])
def test_planted_target_in_dims_is_refused(tmp_path: Path, payload: str) -> None:
    """``dims`` are merged into the model's top level, so they are checked like the model."""
    marker = tmp_path / "pwned"
    node, _, names = _payloads(marker)[payload]
    path = _planted_checkpoint(tmp_path, _model_cfg(MULTI), dims={**DIMS, "markers": node})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _assert_one_line(str(err.value), f"{path}: dims.markers._target_ ", names)
    with pytest.raises(CheckpointError, match=r"^model\.markers\._target_ "):
        build_model(_model_cfg(MULTI), {**DIMS, "markers": node})
    assert not marker.exists()


def test_models_are_built_without_hydra_locate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A genuine checkpoint is rebuilt from the registry's class objects: Hydra's importer and
    importlib are never asked to import anything."""
    import importlib

    import hydra._internal.utils as hydra_utils
    import hydra.utils

    path = _planted_checkpoint(tmp_path, _model_cfg(MULTI))
    ckpt = load_checkpoint(path)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"imported by name: {args}")

    monkeypatch.setattr(hydra_utils, "_locate", refuse)
    monkeypatch.setattr(hydra.utils, "instantiate", refuse)
    monkeypatch.setattr(hydra.utils, "get_class", refuse)
    monkeypatch.setattr(importlib, "import_module", refuse)
    model = model_from_checkpoint(ckpt, path)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_no_name_based_import_on_file_data_in_src() -> None:
    """Static audit: Hydra's instantiate is used only on the user's own training config
    (callbacks, loggers, trainer, optimiser, scheduler); nothing resolves names from data, and the
    modules that read models from files import nothing by name."""
    users = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(SRC).as_posix()
        assert "_locate" not in text and "get_class(" not in text, rel
        assert "get_method(" not in text, rel
        if re.search(r"(?<![\w.])instantiate\(", text):
            users.append(rel)
    assert users == ["training/module.py", "training/run.py"]
    readers = ["models/registry.py", "training/checkpoint.py", "training/embed.py"]
    readers += ["expression/mlp.py", "expression/linear.py", "expression/normalise.py"]
    readers += sorted(p.relative_to(SRC).as_posix() for p in (SRC / "inference").glob("*.py"))
    for rel in readers:
        text = (SRC / rel).read_text()
        assert "hydra.utils" not in text and "import_module" not in text, rel
        assert "__import__" not in text and "importlib" not in text, rel


def test_planted_encoder_checkpoint_for_embed_is_refused(tmp_path: Path) -> None:
    from immunoplex.training.embed import build_encoder

    marker = tmp_path / "pwned"
    node, _, _ = _payloads(marker)["package_function_writes_a_file"]
    cfg, _ = _plant(_model_cfg(MULTI), "encoder", node)
    path = _planted_checkpoint(tmp_path, cfg)
    with pytest.raises(CheckpointError) as err:
        build_encoder(_model_cfg(MULTI), DIMS["markers"], str(path))
    _assert_one_line(str(err.value), f"{path}: model.encoder._target_ ", "write_text")
    with pytest.raises(CheckpointError, match=r"^model\.encoder\._target_ 'os\.system'"):
        build_encoder(_plant(_model_cfg(MULTI), "encoder", {"_target_": "os.system"})[0], ["A"])
    assert not marker.exists()


def test_predict_cli_refuses_a_planted_checkpoint(tmp_path: Path) -> None:
    import subprocess
    import sys

    marker = tmp_path / "pwned.pth"
    node, _, _ = _payloads(marker)["package_function_writes_a_file"]
    cfg, _ = _plant(_model_cfg(MULTI), "aggregator", node)
    path = _planted_checkpoint(tmp_path, cfg)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "immunoplex.cli.predict",
            f"ckpt={path}",
            f"input={tmp_path / 'slide.ome.tif'}",
            f"out_dir={tmp_path / 'out'}",
            "heatmaps=false",
            "progress=false",
        ],
        capture_output=True,
        text=True,
        cwd=SRC.parents[1],
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: {path}: model.aggregator._target_ 'immunoplex.utils.atomic.write_text' "
        "is not a registered model class"
    ], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not marker.exists()


# ---- saved expression models ----------------------------------------------------------------


@pytest.mark.parametrize("place", ["top", "expression_encoder", "fusion", "list"])
def test_expression_model_config_with_planted_target_is_refused(tmp_path: Path, place: str) -> None:
    from immunoplex.errors import ConfigError
    from immunoplex.expression.mlp import build_expression_only_model

    marker = tmp_path / "pwned"
    node, _, _ = _payloads(marker)["package_function_writes_a_file"]
    cfg, where = _plant(_model_cfg("expression_only"), place, node)
    path = tmp_path / "expr_model.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    with pytest.raises(ConfigError) as err:
        build_expression_only_model(4, DIMS["gene_names"], str(path))
    _assert_one_line(str(err.value), f"{path}: {where}._target_ ", "write_text")
    assert not marker.exists()


def test_expression_only_torch_checkpoint_with_planted_target_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    node, _, _ = _payloads(marker)["imported_attribute"]
    cfg, _ = _plant(_model_cfg("expression_only"), "expression_encoder", node)
    path = _planted_checkpoint(tmp_path, cfg)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _assert_one_line(str(err.value), f"{path}: model.expression_encoder._target_ ", "Path.touch")
    assert not marker.exists()


def test_elastic_net_json_with_planted_target_is_refused(tmp_path: Path) -> None:
    """The elastic-net JSON is data only (coefficients, normaliser statistics): a planted
    ``_target_`` is an unknown field, refused, never resolved."""
    import pandas as pd

    from immunoplex.expression.linear import ElasticNetExpressionModel, predict_expression

    rng = np.random.default_rng(0)
    genes = DIMS["gene_names"]
    x = pd.DataFrame(rng.normal(size=(40, 4)), columns=genes, index=[f"p{i}" for i in range(40)])
    y = (x[genes[0]] > 0).astype(int)
    state = ElasticNetExpressionModel().fit(x, y, ["A"] * 20 + ["B"] * 20).to_dict()
    marker = tmp_path / "pwned"
    node, _, _ = _payloads(marker)["package_function_writes_a_file"]
    bad = copy.deepcopy(state)
    bad["config"].update({"_target_": node["_target_"], "path": str(marker)})
    with pytest.raises(CheckpointError) as err:
        predict_expression(bad, x)
    assert "malformed" in str(err.value) and "\n" not in str(err.value)
    # the normaliser's state is read field by field: an extra key is never looked at
    bad = copy.deepcopy(state)
    bad["normalizer"].update({"_target_": node["_target_"], "path": str(marker)})
    assert np.array_equal(predict_expression(bad, x), predict_expression(state, x))
    assert not marker.exists()
