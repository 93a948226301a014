"""Fixtures for the model tests (CPU, seconds)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from .model_inputs import GENE_NAMES, MARKERS, make_batch


@pytest.fixture
def dims() -> dict[str, Any]:
    """What the training code passes to ``instantiate(cfg.model, **dims)``."""
    return {
        "n_channels": len(MARKERS),
        "markers": list(MARKERS),
        "n_genes": len(GENE_NAMES),
        "gene_names": list(GENE_NAMES),
        "n_clinical": 2,
        "treatments": ["anti-PD-1", "bexmarilimab+anti-PD-1"],
    }


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    return make_batch()
