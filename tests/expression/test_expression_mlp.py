"""Expression-only torch model used by the LOCO driver (plain training loop)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from immunoplex.expression.mlp import MLPConfig, TorchExpressionModel  # noqa: E402


@pytest.mark.slow  # torch start-up and training: ~5-25 s on 2 busy cores
def test_mlp_fits_signal_and_uses_training_statistics_only() -> None:
    rng = np.random.default_rng(0)
    n, p = 80, 10
    x = rng.normal(size=(n, p))
    y = (x[:, 0] > 0).astype(int)
    idx = [f"p{i}" for i in range(n)]
    df = pd.DataFrame(x, index=idx, columns=[f"G{j}" for j in range(p)])
    labels = pd.Series(y, index=idx)
    labels.iloc[:5] = -1
    cohorts = pd.Series(np.repeat(["A", "B"], n // 2), index=idx)
    cfg = MLPConfig(epochs=60, lr=3e-3, seeds=(0,), threads=1)
    model = TorchExpressionModel(cfg).fit(df.iloc[:60], labels.iloc[:60], cohorts.iloc[:60])
    assert set(model.normalizer.cohort_stats) == {"A", "B"}
    assert model.normalizer.cohort_stats["B"][2] == 20  # only the training rows of B
    prob = model.predict_proba(df.iloc[60:], ["NEW"] * 20)
    assert prob.shape == (20,) and ((prob >= 0) & (prob <= 1)).all()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[60:], prob) > 0.8


def test_default_network_is_the_mlp_over_every_gene() -> None:
    """The LOCO "mlp" method stays an MLP although the shipped expression_only config now scores
    gene sets; an explicit config is taken as it is."""
    from immunoplex.expression.mlp import build_expression_only_model
    from immunoplex.models.expression import ExpressionEncoder
    from immunoplex.models.feature_extract import GeneSetScores
    from immunoplex.paths import config_dir

    genes = ["CD8A", "STAB1", "CD163", "DKK1", "EPCAM", "PECAM1", "COL1A1", "IFNG"]
    model = build_expression_only_model(len(genes), genes, None)
    assert isinstance(model.expression_encoder, ExpressionEncoder)
    assert model.expression_encoder.n_genes == len(genes)
    shipped = build_expression_only_model(
        len(genes), genes, str(config_dir() / "model" / "expression_only.yaml")
    )
    assert isinstance(shipped.expression_encoder, GeneSetScores)
