"""The cell stage: segmentation, a per-cell table, phenotypes and spatial features.

``segment`` (tiled, bounded memory; backends in ``backends``), ``quantify`` (per-cell table,
compartments), ``phenotype`` (rule tables), ``spatial`` (slide/patient features), ``io``
(AnnData, Parquet, OME-TIFF masks, QuPath GeoJSON), ``pipeline`` (one slide end to end).
"""

from immunoplex.cells.backends import SegmentationBackend, make_backend, register_backend
from immunoplex.cells.phenotype import PhenotypeScheme, assign_phenotypes
from immunoplex.cells.pipeline import run_slide
from immunoplex.cells.quantify import CellTable, CompartmentParams
from immunoplex.cells.segment import SegmentParams, segment_slide

__all__ = [
    "CellTable",
    "CompartmentParams",
    "PhenotypeScheme",
    "SegmentParams",
    "SegmentationBackend",
    "assign_phenotypes",
    "make_backend",
    "register_backend",
    "run_slide",
    "segment_slide",
]
