"""Expression-only torch model trained with a plain full-batch loop (for leave-one-cohort-out).

The network is the project's :class:`~immunoplex.models.response_model.ResponseModel` with only
the expression modality, built from ``configs/model/expression_only.yaml`` when that config exists
(the same config the Lightning trainer uses, with its expression encoder set to the MLP over
every gene, ``model/expression_encoder=mlp``: this is the "mlp" method of the ICB
leave-one-cohort-out table, while the shipped config now uses gene-set scores) and from
ResponseModel defaults otherwise; treatment
conditioning is switched off because a held-out cohort may carry a treatment never seen in
training. A few seeds are averaged (a small, cheap ensemble reduces variance on ~200 samples).
The normaliser is fitted on the training cohorts only, exactly like the elastic-net path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.errors import ConfigError, ExpressionError
from immunoplex.expression.normalise import ExpressionNormalizer


@dataclass
class MLPConfig:
    """Training-loop settings for the expression-only torch model."""

    epochs: int = 150
    lr: float = 1e-3
    weight_decay: float = 1e-2
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1  # more threads only spin on busy shared cores
    model_config: str | None = None  # path to a model yaml; default configs/model/expression_only
    normalizer: dict[str, Any] = field(default_factory=lambda: {"method": "zscore_cohort"})


def _default_model_config() -> Path | None:
    from immunoplex.paths import config_dir

    path = config_dir() / "model" / "expression_only.yaml"
    return path if path.is_file() else None


#: composed into the default config: the MLP over every gene (the shipped default is gene sets)
DEFAULT_OVERRIDES = ("model/expression_encoder=mlp",)


def _compose_model_config(path: Path, overrides: Sequence[str] = ()) -> Any:
    """``configs/model/<name>.yaml`` with a defaults list: ``cfg.model`` of ``train model=name``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    root = path.resolve().parent.parent
    if path.resolve().parent.name != "model" or not (root / "train.yaml").is_file():
        raise ConfigError(
            f"{path}: a model config with a defaults list must be <configs>/model/<name>.yaml"
        )
    if GlobalHydra.instance().is_initialized():
        raise ConfigError(f"{path}: cannot compose a model config inside a running Hydra app")
    with initialize_config_dir(config_dir=str(root), version_base="1.3"):
        return compose("train", overrides=[f"model={path.stem}", *overrides]).model


def load_model_config(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A model config file as plain data (its own ``${...}`` resolved); not yet checked.
    ``overrides``: Hydra overrides for a config with a defaults list."""
    from omegaconf import OmegaConf

    path = Path(path)
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - YAML and OmegaConf errors come in many types
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{path}: cannot read the model config ({reason[:200]})") from err
    if not OmegaConf.is_dict(cfg):
        raise ConfigError(f"{path}: a model config must be a mapping")
    if "defaults" in cfg:
        cfg = _compose_model_config(path, overrides)
    elif "_target_" not in cfg and "model" in cfg:
        cfg = cfg.model
    plain = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(plain, dict):
        raise ConfigError(f"{path}: the model config must be a mapping")
    return plain


def build_expression_only_model(n_genes: int, gene_names: Sequence[str], config: str | None) -> Any:
    """ResponseModel with the expression modality only (from a model config if given).

    The config is built through the closed model registry (:mod:`immunoplex.models.registry`):
    a ``_target_`` that is not exactly a registered model class is refused before anything is
    built, with a one-line ConfigError naming the file.
    """
    from immunoplex.models.registry import instantiate_model
    from immunoplex.models.response_model import ResponseModel

    dims = {
        "n_channels": 0,
        "markers": None,
        "n_genes": n_genes,
        "gene_names": list(gene_names),
        "n_clinical": 0,
        "treatments": [],
    }
    path = Path(config) if config else _default_model_config()
    if path is not None:
        return instantiate_model(
            load_model_config(path, () if config else DEFAULT_OVERRIDES),
            where=f"{path}: model",
            error=ConfigError,
            **dims,
            modalities=["expression"],
            treatment_mode="none",
            use_clinical=False,
        )
    return ResponseModel(**dims, modalities=["expression"], treatment_mode="none")


class TorchExpressionModel:
    """Normaliser + expression-only ResponseModel ensemble; same fit/predict_proba as elastic-net."""

    def __init__(self, config: MLPConfig | None = None) -> None:
        self.config = config or MLPConfig()
        self.normalizer: ExpressionNormalizer | None = None
        self.models: list[Any] = []

    def fit(
        self,
        values: pd.DataFrame,
        labels: pd.Series | Sequence[int],
        cohorts: pd.Series | Sequence[str] | None = None,
    ) -> TorchExpressionModel:
        import torch

        torch.set_num_threads(self.config.threads)
        y_all = np.asarray(labels, dtype=np.int64)
        self.normalizer = ExpressionNormalizer.from_config(self.config.normalizer)
        x_all = self.normalizer.fit_transform(values, cohorts)
        keep = y_all >= 0
        x = torch.from_numpy(x_all[keep])
        y = torch.from_numpy(y_all[keep].astype(np.float32))
        n_pos = float(y.sum())
        if n_pos == 0 or n_pos == len(y):
            raise ExpressionError("expression model training needs both classes")
        pos_weight = torch.tensor((len(y) - n_pos) / n_pos)
        batch = {"expression": x, "has_expression": torch.ones(len(x), dtype=torch.bool)}
        self.models = []
        for seed in self.config.seeds:
            torch.manual_seed(seed)
            model = build_expression_only_model(
                x.shape[1], self.normalizer.genes, self.config.model_config
            )
            opt = torch.optim.AdamW(
                model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
            )
            model.train()
            for _ in range(self.config.epochs):
                opt.zero_grad()
                logit = model(batch)["logit"]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logit, y, pos_weight=pos_weight
                )
                loss.backward()
                opt.step()
            model.eval()
            self.models.append(model)
        return self

    def predict_proba(
        self, values: pd.DataFrame, cohorts: pd.Series | Sequence[str] | None = None
    ) -> np.ndarray:
        import torch

        if self.normalizer is None or not self.models:
            raise ExpressionError("expression model used before fit")
        x = torch.from_numpy(self.normalizer.transform(values, cohorts))
        batch = {"expression": x, "has_expression": torch.ones(len(x), dtype=torch.bool)}
        with torch.no_grad():
            probs = [torch.sigmoid(m(batch)["logit"]).numpy() for m in self.models]
        return np.mean(probs, axis=0).astype(np.float64)
