"""A tiny synthetic cohort generated once per test session (in-process, no progress bar)."""

from __future__ import annotations

from pathlib import Path

import pytest

from immunoplex.synth.cohort import CohortSummary, generate_cohort


@pytest.fixture(scope="session")
def synth_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CohortSummary]:
    out = tmp_path_factory.mktemp("synth_tiny")
    summary = generate_cohort(out, size="tiny", seed=0, workers=1, progress=False)
    return out, summary
