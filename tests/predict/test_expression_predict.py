"""immunoplex-predict on an expression table alone: elastic-net JSON models and torch checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from immunoplex.errors import ConfigError
from immunoplex.expression.linear import ElasticNetExpressionModel
from immunoplex.inference.options import PredictOptions
from immunoplex.inference.run import predict


def _cohort(seed: int, n: int = 80, genes: int = 30) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(5, 1, (n, genes))
    y = (x[:, 0] - x[:, 1] + rng.normal(0, 0.7, n) > 0).astype(int)
    df = pd.DataFrame(
        x, index=[f"s{seed}_{i}" for i in range(n)], columns=[f"G{j}" for j in range(genes)]
    )
    return df, y


def test_elastic_net_json_scores_a_new_cohort(tmp_path: Path) -> None:
    train_x, train_y = _cohort(0)
    model = ElasticNetExpressionModel().fit(train_x, train_y, ["train"] * len(train_y))
    ckpt = tmp_path / "enet.json"
    ckpt.write_text(json.dumps(model.to_dict()))
    new_x, new_y = _cohort(1)
    table = tmp_path / "new.csv"
    new_x.rename_axis("patient_id").to_csv(table)
    opts = PredictOptions(
        ckpt=str(ckpt), input=None, out_dir=str(tmp_path / "out"), expression=str(table)
    )
    df = predict(opts)
    assert len(df) == len(new_y) and (tmp_path / "out" / "predictions.csv").is_file()
    assert roc_auc_score(new_y, df["probability"]) > 0.8
    with pytest.raises(ConfigError, match="needs expression=PATH"):
        predict(PredictOptions(ckpt=str(ckpt), input=None, out_dir=str(tmp_path / "o2")))
