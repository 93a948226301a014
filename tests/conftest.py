"""Session fixtures: one tiny synthetic cohort shared by every test that needs slides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("IMMUNOPLEX_REALDATA", REPO_ROOT.parent / "shared" / "realdata"))


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny` synthetic cohort (seconds to generate), read-only for tests."""
    from immunoplex.synth import generate_cohort

    out = tmp_path_factory.mktemp("tiny_cohort")
    generate_cohort(out, size="tiny", seed=0, workers=1)
    return out


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real third-party data not found at {REALDATA} (set IMMUNOPLEX_REALDATA)")
    return REALDATA
