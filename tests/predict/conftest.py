"""Session fixtures for inference tests: checkpoints trained once on the synthetic cohorts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from immunoplex.inference.options import PredictOptions
from tests.training.helpers import compose_train, fast_overrides


def train_checkpoint(cohort: Path, out: Path, epochs: int, extra: list[str] | None = None) -> Path:
    """Train with the shipped config (CPU, quick) and return the final checkpoint."""
    from immunoplex.training.run import train

    cfg = compose_train(fast_overrides(cohort, epochs=epochs) + list(extra or []), output_dir=out)
    summary = train(cfg)
    return Path(summary["checkpoint"])


@pytest.fixture(scope="session")
def trained_ckpt(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default multimodal model, 2 epochs on the tiny cohort (calibrated on validation)."""
    return train_checkpoint(tiny_cohort, tmp_path_factory.mktemp("run_multimodal"), epochs=2)


@pytest.fixture(scope="session")
def agnostic_ckpt(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The panel-agnostic model (any subset of markers), 2 epochs on the tiny cohort."""
    return train_checkpoint(
        tiny_cohort,
        tmp_path_factory.mktemp("run_agnostic"),
        epochs=2,
        extra=["model=panel_agnostic"],
    )


def opts(ckpt: Path, inp: Path, out: Path, **kw: object) -> PredictOptions:
    """Predict options for tests: no heatmap images, no progress bar, ``kw`` on top."""
    base: dict[str, object] = {"heatmaps": False, "progress": False}
    base.update(kw)
    return PredictOptions(ckpt=str(ckpt), input=str(inp), out_dir=str(out), **base)  # type: ignore[arg-type]


def sub_manifest(cohort: Path, out: Path, patients: list[str]) -> Path:
    """A manifest with only ``patients`` (absolute image paths)."""
    df = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    df = df[df["patient_id"].isin(patients)].copy()
    df["image"] = [str((cohort / p).resolve()) for p in df["image"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    return out


#: A `small`-sized cohort whose response is driven mostly by what the images show (intratumoural
#: CD8 effect x2, no expression-only effect): an image model learns it in minutes on a CPU.
STRONG_IMAGE_SIGNAL = {
    "n_patients": 300,
    "truth.effects.image_only.cd8_intratumoural": 3.0,
    "truth.effects.expression_only.ifn": 0.0,
    "truth.effects.intercept": 0.0,
}


@pytest.fixture(scope="session")
def image_signal_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from immunoplex.synth import generate_cohort

    out = tmp_path_factory.mktemp("image_signal_cohort")
    generate_cohort(out, size="small", seed=0, workers=2, progress=False, **STRONG_IMAGE_SIGNAL)
    return out
