"""The session's tiny synthetic cohort (tests/conftest.py) with its summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from immunoplex.synth.cohort import CohortSummary


@pytest.fixture(scope="session")
def synth_tiny(tiny_cohort: Path) -> tuple[Path, CohortSummary]:
    """(directory, summary) of the shared tiny cohort; read-only."""
    payload = json.loads((tiny_cohort / "synth_summary.json").read_text())
    fields = {k: float("nan") if v is None else v for k, v in payload["summary"].items()}
    return tiny_cohort, CohortSummary(**fields)
