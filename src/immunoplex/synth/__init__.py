"""Synthetic multiplex immunofluorescence + expression cohort with a known response truth.

Public entry points: :func:`generate_cohort` (images + tables on disk) and :func:`sample_truth`
(latents and true/oracle probabilities only, no images). Imports are lazy so that slide workers
load only what they need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from immunoplex.synth.cohort import CohortSummary, generate_cohort
    from immunoplex.synth.truth import oracle_aurocs, sample_truth

__all__ = ["CohortSummary", "generate_cohort", "oracle_aurocs", "sample_truth"]

_WHERE = {
    "CohortSummary": "immunoplex.synth.cohort",
    "generate_cohort": "immunoplex.synth.cohort",
    "oracle_aurocs": "immunoplex.synth.truth",
    "sample_truth": "immunoplex.synth.truth",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'immunoplex.synth' has no attribute {name!r}")
