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
    with pytest.raises(
        CheckpointError, match=r"foreign.ckpt: model\._target_ 'os.system' is not a registered"
    ):
        load_checkpoint(path)
    nested = {
        "_target_": "immunoplex.models.response_model.ResponseModel",
        "encoder": {"_target_": "subprocess.call", "_partial_": True},
    }
    with pytest.raises(CheckpointError, match=r"^model\.encoder\._target_ 'subprocess.call'"):
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


# ---- the closed model registry (issue 14.1) -------------------------------------------------

HEAVY = {"resnet50", "efficientnet_b0", "convnext_tiny"}  # big backbones: seconds each on CPU


def _model_names() -> list[str]:
    from immunoplex.paths import config_dir

    return sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))


def _composed(name: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from immunoplex.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}"])
    out = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(out, dict)
    return out


def _targets(node: object) -> list[str]:
    if isinstance(node, dict):
        out = [node["_target_"]] if "_target_" in node else []
        return out + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


def test_registry_is_explicit_model_classes_named_by_their_path() -> None:
    import inspect

    from torch import nn

    import immunoplex.models as models
    from immunoplex.models.registry import MODEL_CLASSES

    for key, cls in MODEL_CLASSES.items():
        assert inspect.isclass(cls) and issubclass(cls, nn.Module), key
        assert key == f"{cls.__module__}.{cls.__qualname__}", key
    # every public nn.Module class of immunoplex.models is buildable; building blocks are not
    public = {
        f"{v.__module__}.{v.__qualname__}"
        for v in vars(models).values()
        if inspect.isclass(v) and issubclass(v, nn.Module)
    }
    assert set(MODEL_CLASSES) == public
    with pytest.raises(TypeError):
        MODEL_CLASSES["os.system"] = object  # type: ignore[index]


@pytest.mark.parametrize("name", _model_names())
def test_every_shipped_model_config_uses_registry_classes(name: str) -> None:
    from immunoplex.models.registry import MODEL_CLASSES

    targets = _targets(_composed(name))
    assert targets and set(targets) <= set(MODEL_CLASSES), targets
    check_targets(_composed(name))


def _dims() -> dict:
    from tests.models.model_inputs import GENE_NAMES, MARKERS

    return {
        "n_channels": len(MARKERS),
        "markers": list(MARKERS),
        "n_genes": len(GENE_NAMES),
        "gene_names": list(GENE_NAMES),
        "n_clinical": 2,
        "treatments": ["anti-PD-1", "bexmarilimab+anti-PD-1"],
    }


def _legacy_build(cfg: dict, dims: dict) -> torch.nn.Module:
    """How build_model built models before the registry: Hydra instantiate of the config."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.create(dict(cfg)), **dims, _convert_="all")


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in _model_names()],
)
def test_old_checkpoints_load_and_predict_identical_probabilities(
    tmp_path: Path, name: str
) -> None:
    """A checkpoint written by the pre-registry code (Hydra-built model, the shipped configs'
    ``_target_`` strings) loads through the registry, with identical weights and probabilities;
    and the registry builds the same network as Hydra did (same initial weights for a seed)."""
    import warnings

    from immunoplex.inference.predictor import Predictor
    from immunoplex.training.checkpoint import model_from_checkpoint
    from tests.models.model_inputs import make_batch

    cfg, dims = _composed(name), _dims()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gene sets partly absent from the toy gene list
        torch.manual_seed(0)
        legacy = _legacy_build(cfg, dims).eval()
        torch.manual_seed(0)
        fresh = build_model(cfg, dims)
    assert type(fresh) is type(legacy)
    for (k, a), (k2, b) in zip(
        legacy.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b), k
    path = tmp_path / "old.ckpt"
    meta = {"schema_version": 1, "model": cfg, "dims": dims, "threshold": 0.5}
    state = {f"model.{k}": v for k, v in legacy.state_dict().items()}
    torch.save({"state_dict": state, "immunoplex": meta}, path)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rebuilt = model_from_checkpoint(load_checkpoint(path), path)
        pred = Predictor.load(path, "cpu")
    batch = make_batch()
    with torch.no_grad():
        want = torch.sigmoid(legacy(batch)["logit"])
        assert torch.equal(torch.sigmoid(rebuilt(batch)["logit"]), want)
        assert torch.equal(torch.sigmoid(pred.model(batch)["logit"]), want)


def test_registry_honours_partial_args_and_convert() -> None:
    import functools

    from immunoplex.models.encoders import SmallCNN
    from immunoplex.models.registry import instantiate_model

    node = {"_target_": "immunoplex.models.encoders.SmallCNN", "_partial_": True, "width": 8}
    factory = instantiate_model(node)
    assert isinstance(factory, functools.partial) and factory.func is SmallCNN
    assert factory.keywords == {"width": 8}
    enc = instantiate_model({**node, "_partial_": False, "_convert_": "all"}, n_channels=3)
    assert isinstance(enc, SmallCNN)
    with pytest.raises(CheckpointError, match=r"^model\._convert_ must be one of"):
        instantiate_model({**node, "_convert_": "evil"})
    with pytest.raises(CheckpointError, match=r"^model: cannot build .*SmallCNN \(.*unexpected"):
        instantiate_model({**node, "_partial_": False, "bogus": 1}, n_channels=3)
    assert instantiate_model({**node, "_args_": [3]}).args == (3,)
