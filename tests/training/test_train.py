"""train(cfg) end to end on the tiny synthetic cohort: files, checkpoint contents, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from immunoplex.data.datamodule import ResponseDataModule, data_config_from
from immunoplex.training.checkpoint import load_checkpoint, model_from_checkpoint
from immunoplex.training.inference import infer
from immunoplex.training.run import train

from .helpers import compose_train, fast_overrides


@pytest.fixture(scope="module")
def tiny_run(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("tiny_run")
    cfg = compose_train(fast_overrides(tiny_cohort, epochs=2), output_dir=out)
    summary = train(cfg)
    return {"summary": summary, "out": out, "cfg": cfg}


def test_run_directory_has_checkpoint_logs_predictions(tiny_run: dict) -> None:
    out: Path = tiny_run["out"]
    s = tiny_run["summary"]
    assert Path(s["checkpoint"]) == out / "model.ckpt"
    for name in (
        "model.ckpt",
        "summary.json",
        "config.yaml",
        "predictions_val.csv",
        "predictions_test.csv",
        "logs/metrics.csv",
    ):
        assert (out / name).is_file(), name
    metrics = pd.read_csv(out / "logs" / "metrics.csv")
    for col in (
        "train/loss",
        "val/loss",
        "val/auroc",
        "val/auprc",
        "val/ece",
        "val/brier",
        "val/balanced_accuracy",
        "val/sensitivity",
        "val/specificity",
        "val/n_patients",
    ):
        assert col in metrics.columns, col
    assert json.loads((out / "summary.json").read_text())["test_auroc"] == s["test_auroc"]
    assert s["n_patients"]["test"] == 6
    assert 0.0 <= s["test_auroc"] <= 1.0 and s["test_bayes_auroc"] is not None


def test_checkpoint_carries_what_inference_needs(tiny_run: dict) -> None:
    ckpt = load_checkpoint(tiny_run["out"] / "model.ckpt")
    meta = ckpt["immunoplex"]
    data = meta["data"]
    assert data["panel"]["markers"] == ["DAPI", "PanCK", "CD8", "CD68", "STAB1", "CD31", "CD66b"]
    assert data["tiling"]["tile_size"] == 32 and data["tiling"]["mpp"] == 2.0
    assert len(data["genes"]) >= 200 and data["expression_norm"]["method"] == "zscore_cohort"
    assert data["treatments"] == ["anti-PD-1", "bexmarilimab+anti-PD-1"]
    assert set(data["clinical_stats"]) == {"sclever1"}
    assert meta["calibration"]["temperature"] > 0
    assert meta["label_names"] == ["non-responder", "responder"]
    assert meta["panel_agnostic"] is False  # stored by training.schema
    assert {"torch", "lightning", "immunoplex"} <= set(meta["versions"])
    assert meta["config"]["model"]["_target_"].endswith("ResponseModel")


def test_rebuilt_model_reproduces_test_predictions(tiny_run: dict) -> None:
    """The model rebuilt from the checkpoint alone gives the logged test logits."""
    cfg = tiny_run["cfg"]
    ckpt = load_checkpoint(tiny_run["out"] / "model.ckpt")
    model = model_from_checkpoint(ckpt)
    dm = ResponseDataModule(data_config_from(cfg.data, int(cfg.seed)))
    dm.setup()

    from immunoplex.data.transforms import normalise_tiles

    def prepare(batch: dict) -> dict:
        out = dict(batch)
        out["tiles"] = normalise_tiles(batch)
        return out

    df = infer(prepare, model, dm.dataset("test"))
    saved = pd.read_csv(tiny_run["out"] / "predictions_test.csv", dtype={"patient_id": str})
    merged = saved.merge(df, on="patient_id", suffixes=("_saved", ""))
    assert len(merged) == len(saved) == 6
    np.testing.assert_allclose(merged["logit"], merged["logit_saved"], rtol=1e-4, atol=1e-5)


def test_train_and_predict_encode_clinical_values_identically(tiny_run: dict) -> None:
    """The data module's clinical inputs equal the predictor's for the same manifest rows."""
    from immunoplex.inference.inputs import collect_inputs
    from immunoplex.inference.predictor import Predictor

    cfg = tiny_run["cfg"]
    dm = ResponseDataModule(data_config_from(cfg.data, int(cfg.seed)))
    dm.setup()
    pred = Predictor.load(tiny_run["out"] / "model.ckpt", device="cpu")
    assert pred.clinical == dm.clinical and pred.clinical_columns == ["sclever1"]
    patients = collect_inputs(cfg.data.manifest, pred.clinical_columns)
    assert len(patients) == len(dm.records)
    for p in patients:
        train_vec = dm.records[p.patient_id].clinical
        np.testing.assert_array_equal(pred.clinical.transform(p.clinical), train_vec)
    assert pred.clinical.transform({}).tolist() == [0.0, 0.0]  # missing: unobserved, not imputed


def test_same_seed_same_result(tiny_cohort: Path, tiny_run: dict, tmp_path: Path) -> None:
    cfg = compose_train(fast_overrides(tiny_cohort, epochs=2), output_dir=tmp_path)
    again = train(cfg)
    a = pd.read_csv(tiny_run["out"] / "predictions_test.csv")["logit"].to_numpy()
    b = pd.read_csv(tmp_path / "predictions_test.csv")["logit"].to_numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert again["test_auroc"] == tiny_run["summary"]["test_auroc"]


@pytest.mark.parametrize("model", ["image_only", "expression_only"])
def test_single_modality_configs_train(tiny_cohort: Path, tmp_path: Path, model: str) -> None:
    cfg = compose_train(fast_overrides(tiny_cohort, epochs=1) + [f"model={model}"], tmp_path)
    s = train(cfg)
    assert s["model"] == model and (tmp_path / "model.ckpt").is_file()


def test_two_stage_trains_from_cached_embeddings(tiny_cohort: Path, tmp_path: Path) -> None:
    over = fast_overrides(tiny_cohort, epochs=1) + [
        "experiment=two_stage",
        f"data.embeddings.cache_dir={tmp_path}/emb",
        "trainer.max_epochs=1",
    ]
    cfg = compose_train(over, tmp_path / "run")
    s = train(cfg)
    files = sorted((tmp_path / "emb").glob("*.npy"))
    assert len(files) == 28  # one entry per slide of the tiny cohort
    emb = np.load(files[0])
    assert emb.ndim == 2 and np.isfinite(emb).all()
    # The checkpoint's encoder is the frozen embedding encoder: a second run reuses the cache.
    from immunoplex.cli.embed import embed

    report = embed(cfg)
    assert report == {"cached": 28, "computed": 0}
    ckpt = load_checkpoint(s["checkpoint"])
    assert any(k.startswith("model.encoder.") for k in ckpt["state_dict"])


def test_pos_weight_counts_training_labels(tiny_cohort: Path, tmp_path: Path) -> None:
    cfg = compose_train(fast_overrides(tiny_cohort), tmp_path)
    dm = ResponseDataModule(data_config_from(cfg.data, 0))
    dm.setup()
    y = np.array([dm.records[p].label for p in dm.patient_ids("train")])
    assert dm.pos_weight() == pytest.approx((y == 0).sum() / (y == 1).sum())
    assert torch.is_tensor(dm.dataset("train")[(0, 1)]["tiles"])
