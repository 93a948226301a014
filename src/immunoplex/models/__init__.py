"""Models: tile encoders, the panel-agnostic marker encoder, MIL aggregators, the expression
encoder, fusion modules and ``ResponseModel`` (see docs/models.md); ``MODEL_CLASSES`` is the closed
registry of the classes a model config or checkpoint may name (models/registry.py)."""

from immunoplex.models.aggregators import GatedAttentionMIL, MaxMIL, MeanMIL, TransformerMIL
from immunoplex.models.encoders import SmallCNN, TorchvisionEncoder, inflate_conv_weight
from immunoplex.models.expression import ExpressionEncoder, resolve_gene_sets
from immunoplex.models.feature_extract import GeneSetScores, MarkerFeatures, TileMarkerCounts
from immunoplex.models.feature_model import FeatureModel
from immunoplex.models.fusion import ConcatFusion, CrossAttentionFusion, GatedBilinearFusion
from immunoplex.models.marker_encoder import MarkerEncoder
from immunoplex.models.registry import MODEL_CLASSES, instantiate_model
from immunoplex.models.response_model import ResponseModel

__all__ = [
    "ConcatFusion",
    "CrossAttentionFusion",
    "ExpressionEncoder",
    "FeatureModel",
    "GeneSetScores",
    "MarkerFeatures",
    "TileMarkerCounts",
    "GatedAttentionMIL",
    "GatedBilinearFusion",
    "MODEL_CLASSES",
    "MarkerEncoder",
    "MaxMIL",
    "MeanMIL",
    "ResponseModel",
    "SmallCNN",
    "TorchvisionEncoder",
    "TransformerMIL",
    "inflate_conv_weight",
    "instantiate_model",
    "resolve_gene_sets",
]
