"""Every shipped config composes (and every model config is built by tests/models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from immunoplex.paths import config_dir

CONFIGS = config_dir()
# cfg.model of `train model=NAME` for every model config, written from the configs before they
# were rebuilt from the model/{encoder,aggregator,expression_encoder,fusion} groups; since
# 2026-12-01 (issue 16) the multimodal family's expression_encoder is gene_set_scores.
MODEL_SNAPSHOT = Path(__file__).parent / "data" / "model_configs.json"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_run_dirs_never_collide() -> None:
    text = (CONFIGS / "hydra" / "default.yaml").read_text()
    assert "${now:%Y-%m-%d_%H-%M-%S}" in text and "SLURM_JOB_ID" in text


def _compose(name: str, overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _model(overrides: list[str]) -> dict[str, Any]:
    out = OmegaConf.to_container(_compose("train", overrides).model, resolve=True)
    assert isinstance(out, dict)
    return out


SNAPSHOT: dict[str, Any] = json.loads(MODEL_SNAPSHOT.read_text())


def test_snapshot_covers_every_model_config() -> None:
    assert sorted(SNAPSHOT) == _options("model") and len(SNAPSHOT) == 15


@pytest.mark.parametrize("name", sorted(SNAPSHOT))
def test_model_config_composes_to_snapshot(name: str) -> None:
    """Composed from groups, each model config is exactly what it was as a flat file (checkpoints
    and their `_target_` strings depend on it)."""
    assert _model([f"model={name}"]) == SNAPSHOT[name]


def test_model_components_override_on_the_command_line() -> None:
    m = _model(["model/encoder=resnet18", "model/fusion=bilinear"])
    assert m["name"] == "multimodal"
    assert m["encoder"] == SNAPSHOT["resnet18"]["encoder"]
    assert m["fusion"] == SNAPSHOT["bilinear"]["fusion"]
    assert m["aggregator"] == SNAPSHOT["multimodal"]["aggregator"]
    m = _model(["model=bilinear", "model/fusion=concat_gated", "model/aggregator=transformer"])
    assert m["name"] == "bilinear"
    assert m["fusion"] == SNAPSHOT["multimodal"]["fusion"]
    assert m["aggregator"] == SNAPSHOT["transformer_mil"]["aggregator"]
    m = _model(["model=snn_expression", "model/expression_encoder=mlp"])
    assert m["expression_encoder"] == MLP
    # the deep models' expression input is the 8 fixed gene-set scores (the MLP memorised)
    assert SNAPSHOT["multimodal"]["expression_encoder"]["_target_"].endswith("GeneSetScores")
    assert _model(["model=multimodal", "model/expression_encoder=mlp"])["expression_encoder"] == MLP


# The expression MLP, the multimodal models' expression encoder before the gene-set scores.
MLP = {"_target_": "immunoplex.models.expression.ExpressionEncoder", "_partial_": True,
       "hidden_dims": [128], "out_dim": 64, "dropout": 0.3, "norm": "layer", "gene_sets": None}  # fmt: skip


# ---- every shipped YAML: composed through the entry point that uses it, then instantiated ----
PRIMARY = ("train", "tile", "predict", "eval", "synth")
# Heavy torchvision backbones: built in the slow suite only (as in tests/models).
HEAVY = {"resnet50", "efficientnet_b0", "convnext_tiny"}
# Options that need a partner to build (composition alone works without it).
PAIRED = {
    ("data", "manifest"): ["data.manifest=/x/manifest.csv"],
    ("model/fusion", "cross_attention"): ["model/expression_encoder=gene_sets"],
    ("model/aggregator", "marker_features"): ["model=cell_features"],  # pools marker counts
}
REQUIRED_ARGS = {
    "tile": ["manifest=/x/manifest.csv", "out_dir=/x/tiles"],
    "predict": ["ckpt=/x/model.ckpt", "input=/x/slides", "out_dir=/x/pred"],
    "eval": ["predictions=/x/predictions.csv"],
    "synth": ["out_dir=/x/cohort"],
}


def _shipped() -> list[tuple[str, str]]:
    """(group, option) of every YAML under configs/; group "" = a primary config."""
    out = []
    for p in sorted(CONFIGS.rglob("*.yaml")):
        rel = p.relative_to(CONFIGS).with_suffix("")
        out.append((rel.parent.as_posix() if rel.parent != Path(".") else "", rel.name))
    return out


SHIPPED = _shipped()


def _case_id(group: str, option: str) -> str:
    return f"{group}={option}" if group else option


def _param(group: str, option: str) -> Any:
    heavy = option in HEAVY and group in ("model", "model/encoder")
    return pytest.param(
        group, option, id=_case_id(group, option), marks=[pytest.mark.slow] if heavy else []
    )


def _resolved(name: str, overrides: list[str], tmp_path: Path) -> Any:
    """Compose ``name`` with ``overrides`` and resolve every interpolation (hydra's included)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(tmp_path)
    cfg.hydra.job.num = 0
    OmegaConf.resolve(cfg)
    return cfg


def _tiny_model_check(model_cfg: Any) -> None:
    """Build with small dims through the checkpoint builder; forward gives one logit per patient."""
    import warnings

    import torch

    from immunoplex.training.checkpoint import build_model

    from ..models.model_inputs import GENE_NAMES, MARKERS, make_batch

    dims = {
        "n_channels": len(MARKERS),
        "markers": list(MARKERS),
        "n_genes": len(GENE_NAMES),
        "gene_names": list(GENE_NAMES),
        "n_clinical": 2,
        "treatments": ["anti-PD-1", "bexmarilimab+anti-PD-1"],
    }
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gene sets partly absent from the toy gene list
        model = build_model(OmegaConf.to_container(model_cfg, resolve=True), dims)
    model.eval()
    batch = make_batch(b=3, n=4)
    with torch.no_grad():
        logit = model(batch)["logit"]
    assert logit.shape == (3,) and torch.isfinite(logit).all()


def _optimizer(cfg: Any) -> Any:
    import torch
    from hydra.utils import instantiate

    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = instantiate(cfg.optimizer)(params=params)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == pytest.approx(float(cfg.optimizer.lr))
    return opt


def _check_train(group: str, option: str, cfg: Any, tmp_path: Path) -> None:
    import inspect

    import lightning as L
    from hydra.utils import instantiate

    from immunoplex.data.datamodule import (
        ResponseDataModule,
        data_config_from,
        expression_normalizer,
        user_aliases,
    )
    from immunoplex.data.expression_inputs import expression_features
    from immunoplex.io.panel import Panel
    from immunoplex.tiles.params import TilingParams

    if group.startswith("model") or group == "experiment":
        _tiny_model_check(cfg.model)
    if group == "experiment":
        assert cfg.task_name == option
        if option in _options("model"):
            assert cfg.model.name == option
    if group == "optimizer":
        _optimizer(cfg)
    if group == "scheduler":
        sched = OmegaConf.to_container(cfg.scheduler)
        if not sched:
            assert option == "none"
        else:
            assert sched.pop("interval") in ("epoch", "step")
            sched.pop("monitor", None)
            opt = _optimizer(cfg)
            s = instantiate(OmegaConf.create(sched))(optimizer=opt)
            s.step(1.0) if "Plateau" in sched["_target_"] else (opt.step(), s.step())
    if group == "trainer":
        kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer).items() if k != "_target_"}
        assert cfg.trainer._target_ == "lightning.Trainer"
        inspect.signature(L.Trainer).bind(**kwargs)  # every key is a Trainer argument
        if kwargs["accelerator"] == "cpu" and kwargs["devices"] == 1:
            assert isinstance(instantiate(cfg.trainer, logger=False), L.Trainer)
    if group in ("callbacks", "logger"):
        if option in ("wandb", "mlflow"):
            pytest.importorskip(option)
        node = cfg[group] or {}
        built = [instantiate(v) for v in node.values() if v is not None and "_target_" in v]
        kind = L.Callback if group == "callbacks" else L.pytorch.loggers.Logger
        assert all(isinstance(b, kind) for b in built) and len(built) == len(node)
        assert option == "none" or built
    if group == "paths":
        assert str(cfg.paths.runs_dir).startswith(str(cfg.paths.root_dir))
    if group == "hparams_search":
        assert str(cfg.hydra.mode).endswith("MULTIRUN")
        for key in cfg.hydra.sweeper.params:
            assert OmegaConf.select(cfg, key) is not None, key
    if group == "hydra/launcher":
        assert "submitit" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.gpus_per_node >= 1
    if group in ("data", "panel", "tiling", "expression_norm", ""):
        dc = data_config_from(cfg.data, int(cfg.seed))
        dm = ResponseDataModule(dc)
        # the top-level groups reach the data module
        assert dm.params == TilingParams.from_dict(OmegaConf.to_container(cfg.tiling))
        assert dm.panel.markers == list(cfg.panel.markers)
        assert dc.aliases == user_aliases(OmegaConf.to_container(cfg.panel.aliases))
        feats = expression_features(dc.expression_norm)  # expression_norm=features
        if feats is None:
            norm = expression_normalizer(dc)
            assert norm.method == cfg.expression_norm.method
        else:
            assert cfg.expression_norm.method == "features" and feats.families
    if group == "panel":
        panel = Panel(list(cfg.panel.markers), aliases=OmegaConf.to_container(cfg.panel.aliases))
        for canon, syns in cfg.panel.aliases.items():
            assert all(panel.canonical(s) == canon for s in [canon, *syns]), canon
    if group == "tiling":
        t = OmegaConf.to_container(cfg.tiling)
        assert TilingParams.from_dict(t).to_dict() == t  # every key is a TilingParams field
    if group == "expression_norm" and option == "features":
        _fit_features(expression_features(data_config_from(cfg.data, 0).expression_norm))
    elif group == "expression_norm":
        _fit_normaliser(expression_normalizer(data_config_from(cfg.data, 0)))


def _fit_normaliser(norm: Any) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        rng.gamma(2.0, 3.0, (8, 5)), columns=[f"G{i}" for i in range(5)], index=list("abcdefgh")
    )
    cohorts = pd.Series(["c1"] * 4 + ["c2"] * 4, index=df.index)
    out = norm.fit(df, cohorts).transform(df, cohorts)
    assert out.shape == (8, 5) and np.isfinite(out).all()
    if norm.method != "none":
        assert not np.allclose(out, df.to_numpy())


def _fit_features(feats: Any) -> None:
    import numpy as np
    import pandas as pd

    genes = [
        "CD8A",
        "GZMA",
        "PRF1",
        "CXCL9",
        "CXCL10",
        "IFNG",
        "PDCD1",
        "CD274",
        "LAG3",
        "TIGIT",
        "BG1",
        "BG2",
    ]
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.gamma(2.0, 3.0, (8, len(genes))), columns=genes, index=list("abcdefgh"))
    out = feats.fit(df).matrix(df)
    assert out.shape == (8, len(feats.names)) and np.isfinite(out).all() and feats.names


def _check_primary(name: str, cfg: Any) -> None:
    from immunoplex.tiles.params import TilingParams

    if name == "train":
        assert cfg.model._target_.startswith("immunoplex.")
        assert "${" not in str(cfg.hydra.run.dir)
    if name == "tile":
        params = TilingParams.from_dict(OmegaConf.to_container(cfg.tiling))
        assert params == TilingParams.from_dict(OmegaConf.to_container(_shared_tiling()))
        assert list(cfg.panel.markers)
    if name == "predict":
        from immunoplex.inference.options import PredictOptions

        opts = PredictOptions.from_config(cfg)  # unknown keys are an error
        assert opts.ckpt == "/x/model.ckpt" and opts.out_dir == "/x/pred"
        assert "tiling" not in cfg  # predict tiles as the checkpoint says
    if name == "eval":
        keys = set(cfg) - {"hydra"}
        assert keys == {
            "predictions", "compare", "intersect", "out_dir", "prob_column",
            "compare_prob_column", "name", "compare_name", "threshold", "group_by", "n_boot",
            "seed", "ci_level", "ece_bins", "roc_band_boot", "title",
            "survival_groups", "survival_horizons", "survival_time_column", "survival_event_column",
        }  # fmt: skip
    if name == "synth":
        from immunoplex.synth.settings import resolve_settings

        for size, preset in cfg.sizes.items():
            s = resolve_settings(size, config=OmegaConf.to_container(cfg))
            assert s["n_patients"] == preset.n_patients


def _shared_tiling() -> Any:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train").tiling


def test_every_shipped_yaml_has_a_case() -> None:
    names = {_case_id(g, o) for g, o in SHIPPED}
    assert {"train", "tile", "predict", "eval", "synth"} <= names
    for must in ("model/encoder=small_cnn", "model/fusion=bilinear", "tiling=default",
                 "panel=default", "expression_norm=rank", "model/expression_encoder=mlp",
                 "model/aggregator=gated_attention"):  # fmt: skip
        assert must in names
    assert len(SHIPPED) == len(list(CONFIGS.rglob("*.yaml")))


@pytest.mark.parametrize(("group", "option"), [_param(g, o) for g, o in SHIPPED])
def test_every_shipped_config_composes_and_instantiates(
    group: str, option: str, tmp_path: Path
) -> None:
    out = [f"paths.output_dir={tmp_path}"]
    if (group or option).startswith("cells"):  # the cells app's configs (tested in tests/cells)
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name=f"{group}/{option}" if group else option)
        assert OmegaConf.to_container(cfg)
        return
    if group == "":
        assert option in PRIMARY, f"configs/{option}.yaml: a new entry point needs a check here"
        cfg = _resolved(option, REQUIRED_ARGS.get(option, out), tmp_path)
        _check_primary(option, cfg)
        return
    if group == "hydra":
        assert option == "default"  # selected by train.yaml
        cfg = _resolved("train", out, tmp_path)
        assert str(cfg.hydra.run.dir).startswith(str(cfg.paths.runs_dir))
        return
    extra = PAIRED.get((group, option), [])
    cfg = _resolved("train", [f"{group}={option}", *out, *extra], tmp_path)
    _check_train(group, option, cfg, tmp_path)
    if group in ("panel", "tiling"):  # shared with immunoplex-tile
        tile = _resolved("tile", [f"{group}={option}", *REQUIRED_ARGS["tile"]], tmp_path)
        assert OmegaConf.to_container(tile[group]) == OmegaConf.to_container(cfg[group])
