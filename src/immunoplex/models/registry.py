"""The closed registry of model classes, and the only way a model config is turned into objects.

A model config (``configs/model/*.yaml``, the ``model`` section stored in a checkpoint, an
expression model's YAML) names classes with Hydra's ``_target_`` syntax. Hydra's own
``instantiate`` imports whatever dotted path it is given and walks attributes
(``immunoplex.utils.atomic.write_text``, ``immunoplex.tiles.cache.Path.touch``...), so a shared
file could make it call anything. Here instead:

- ``MODEL_CLASSES`` maps each allowed ``_target_`` string, exactly, to an ``nn.Module`` class of
  :mod:`immunoplex.models`, every one written out below: no prefix match, no discovery, no
  functions, no attribute walking, nothing is ever imported by name;
- :func:`check_targets` validates a whole config tree (mappings and lists, at every depth) before
  anything is built; :func:`instantiate_model` then builds it from the registry's class objects.

Supported Hydra keys, in a node that has a ``_target_``: ``_partial_`` (a bool; true returns
``functools.partial(cls, *args, **kwargs)``), ``_args_`` (a list of positional arguments, built
by the same rules), ``_convert_`` (``none | partial | object | all``; accepted, and values are
always passed as plain Python containers, which is what ``all`` gives: OmegaConf containers would
resolve ``${...}`` interpolations written in the file) and ``_recursive_`` (only ``true``). Any
other ``_name_`` key, or one of these in a node without a ``_target_``, is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from immunoplex.errors import CheckpointError
from immunoplex.models.aggregators import GatedAttentionMIL, MaxMIL, MeanMIL, TransformerMIL
from immunoplex.models.encoders import SmallCNN, TorchvisionEncoder
from immunoplex.models.expression import ExpressionEncoder
from immunoplex.models.feature_extract import GeneSetScores, MarkerFeatures, TileMarkerCounts
from immunoplex.models.feature_model import FeatureModel
from immunoplex.models.fusion import ConcatFusion, CrossAttentionFusion, GatedBilinearFusion
from immunoplex.models.marker_encoder import MarkerEncoder
from immunoplex.models.response_model import ResponseModel

# The keys are the classes' dotted paths, as written by every checkpoint so far. A new model class
# is buildable from a config only once it is added here, by name.
MODEL_CLASSES: Mapping[str, type[nn.Module]] = MappingProxyType(
    {
        "immunoplex.models.response_model.ResponseModel": ResponseModel,
        "immunoplex.models.encoders.SmallCNN": SmallCNN,
        "immunoplex.models.encoders.TorchvisionEncoder": TorchvisionEncoder,
        "immunoplex.models.marker_encoder.MarkerEncoder": MarkerEncoder,
        "immunoplex.models.aggregators.MeanMIL": MeanMIL,
        "immunoplex.models.aggregators.MaxMIL": MaxMIL,
        "immunoplex.models.aggregators.GatedAttentionMIL": GatedAttentionMIL,
        "immunoplex.models.aggregators.TransformerMIL": TransformerMIL,
        "immunoplex.models.expression.ExpressionEncoder": ExpressionEncoder,
        "immunoplex.models.fusion.ConcatFusion": ConcatFusion,
        "immunoplex.models.fusion.GatedBilinearFusion": GatedBilinearFusion,
        "immunoplex.models.fusion.CrossAttentionFusion": CrossAttentionFusion,
        "immunoplex.models.feature_model.FeatureModel": FeatureModel,
        "immunoplex.models.feature_extract.TileMarkerCounts": TileMarkerCounts,
        "immunoplex.models.feature_extract.MarkerFeatures": MarkerFeatures,
        "immunoplex.models.feature_extract.GeneSetScores": GeneSetScores,
    }
)
CONVERT_MODES = ("none", "partial", "object", "all")
_SPECIAL = ("_target_", "_partial_", "_args_", "_convert_", "_recursive_")


def _show(value: Any, limit: int = 120) -> str:
    """A one-line, bounded repr of a value taken from a file."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _child(where: str, key: Any) -> str:
    name = key if isinstance(key, str) and key.isidentifier() else _show(key, 60)
    return f"{where}.{name}"


def _is_special(key: str) -> bool:
    return len(key) > 2 and key.startswith("_") and key.endswith("_")


def _check_node(node: Mapping[Any, Any], where: str, error: type[Exception]) -> None:
    for key in node:
        if not isinstance(key, str):
            raise error(f"{where}: key {_show(key)} is not a string")
        if _is_special(key) and ("_target_" not in node or key not in _SPECIAL):
            raise error(f"{_child(where, key)} is not allowed in a model config")
    if "_target_" not in node:
        return
    target = node["_target_"]
    if type(target) is not str or target not in MODEL_CLASSES:
        raise error(f"{where}._target_ {_show(target)} is not a registered model class")
    for key in node:
        if not _is_special(key) and not key.isidentifier():
            raise error(f"{where}: {_show(key, 60)} is not an argument name of {target}")
    if "_partial_" in node and type(node["_partial_"]) is not bool:
        raise error(f"{where}._partial_ must be true or false, got {_show(node['_partial_'])}")
    if "_args_" in node and not isinstance(node["_args_"], list | tuple):
        raise error(f"{where}._args_ must be a list, got {_show(node['_args_'])}")
    if "_convert_" in node and node["_convert_"] not in CONVERT_MODES:
        raise error(f"{where}._convert_ must be one of {list(CONVERT_MODES)}")
    if "_recursive_" in node and node["_recursive_"] is not True:
        raise error(f"{where}._recursive_ must be true (nested configs are always built)")


def check_targets(
    node: Any, where: str = "model", error: type[Exception] = CheckpointError
) -> None:
    """Refuse a config tree unless every ``_target_`` in it, at any depth, is a registry key.

    Raises ``error`` with one line naming the place, e.g.
    ``model.encoder._target_ 'os.system' is not a registered model class``.
    """
    if isinstance(node, Mapping):
        _check_node(node, where, error)
        for key, value in node.items():
            check_targets(value, _child(where, key), error)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            check_targets(value, f"{where}[{i}]", error)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def _build(node: Any, where: str, error: type[Exception]) -> Any:
    """Build a checked tree: registry classes for ``_target_`` nodes, plain containers else."""
    if isinstance(node, Mapping):
        if "_target_" not in node:
            return {k: _build(v, _child(where, k), error) for k, v in node.items()}
        cls = MODEL_CLASSES[node["_target_"]]
        args = [
            _build(v, f"{where}._args_[{i}]", error) for i, v in enumerate(node.get("_args_", ()))
        ]
        kwargs = {
            k: _build(v, _child(where, k), error) for k, v in node.items() if not _is_special(k)
        }
        if node.get("_partial_", False):
            return functools.partial(cls, *args, **kwargs)
        try:
            return cls(*args, **kwargs)
        except (TypeError, ValueError) as err:  # wrong or missing arguments from the file
            raise error(f"{where}: cannot build {node['_target_']} ({_first_line(err)})") from err
    if isinstance(node, list | tuple):
        return [_build(v, f"{where}[{i}]", error) for i, v in enumerate(node)]
    return node


def instantiate_model(
    cfg: Mapping[str, Any],
    *,
    where: str = "model",
    error: type[Exception] = CheckpointError,
    **kwargs: Any,
) -> Any:
    """Build a model config from the registry; ``kwargs`` override the top level (as keyword
    overrides do in Hydra), and are checked with the rest before anything is built."""
    if not isinstance(cfg, Mapping):
        raise error(f"{where}: a model config must be a mapping, got {type(cfg).__name__}")
    node = {**cfg, **kwargs}
    if "_target_" not in node:
        raise error(f"{where}: the model config has no _target_")
    check_targets(node, where, error)
    return _build(node, where, error)
