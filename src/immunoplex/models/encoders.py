"""Tile encoders: (M, C, T, T) float tiles -> (M, D) embeddings.

Every encoder takes ``n_channels`` (the panel size) and optionally ``markers`` (canonical panel
marker names) at construction, exposes ``out_dim``, and is called as
``encoder(tiles, channel_mask=None)`` where ``channel_mask`` (M, C) is True for markers the slide
has; absent channels are zeroed so their (zero-filled) content is never trusted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from immunoplex.errors import ConfigError
from immunoplex.models.ops import activation

log = logging.getLogger(__name__)


def _norm2d(kind: str, channels: int) -> nn.Module:
    """2-D normalisation by name; ``group`` is batch-independent (the default for tiles)."""
    if kind == "group":
        return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}; choose 'group', 'batch' or 'none'")


def apply_channel_mask(x: Tensor, channel_mask: Tensor | None) -> Tensor:
    """Zero the channels a slide does not have; ``channel_mask`` is (M, C) bool or None."""
    if channel_mask is None:
        return x
    return x * channel_mask.to(x.dtype)[:, :, None, None]


class ConvBlock(nn.Module):
    """conv3x3 -> norm -> activation, with a residual connection when shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=norm == "none")
        self.norm = _norm2d(norm, c_out)
        self.act = activation(act)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.norm(self.conv(x)))
        return x + y if self.residual else y


#: Global pooling choices of :class:`SmallCNN`.
SMALLCNN_POOLS = ("max", "avg", "avgmax")


class SmallCNN(nn.Module):
    """A small CNN for multiplex tiles (default 32x32 px), fast on a few CPU cores.

    Layout: stride-2 stem (C -> w), stride-2 conv (w -> 2w), ``blocks`` residual 3x3 blocks at
    2w, then global pooling and a linear projection to ``out_dim``. About 4 MMAC per 7x32x32 tile
    at w=32 with one block.

    ``pool``: ``"max"`` (global max: "is there such a cell in the tile", the robust read-out of
    sparse cells such as a few CD8 T cells among hundreds of tumour cells), ``"avg"`` (global
    average: the sparse cells are diluted by the tile's tissue composition) or ``"avgmax"``
    (both, concatenated). See docs/models.md for the measured difference.
    """

    def __init__(
        self,
        n_channels: int,
        markers: Sequence[str] | None = None,
        width: int = 32,
        out_dim: int = 64,
        blocks: int = 1,
        norm: str = "group",
        act: str = "gelu",
        dropout: float = 0.0,
        pool: str = "avgmax",
    ) -> None:
        super().__init__()
        if pool not in SMALLCNN_POOLS:
            raise ConfigError(f"unknown pool {pool!r}; choose one of {list(SMALLCNN_POOLS)}")
        self.n_channels = n_channels
        self.out_dim = out_dim
        self.pool = pool
        self.features = nn.Sequential(
            ConvBlock(n_channels, width, 2, norm, act),
            ConvBlock(width, 2 * width, 2, norm, act),
            *(ConvBlock(2 * width, 2 * width, 1, norm, act) for _ in range(blocks)),
        )
        self.dropout = nn.Dropout(dropout)
        pooled_dim = 2 * width * (2 if pool == "avgmax" else 1)
        self.proj = nn.Linear(pooled_dim, out_dim)

    def forward(self, x: Tensor, channel_mask: Tensor | None = None) -> Tensor:
        f = self.features(apply_channel_mask(x, channel_mask))
        if self.pool == "max":
            pooled = f.amax(dim=(2, 3))
        elif self.pool == "avg":
            pooled = f.mean(dim=(2, 3))
        else:
            pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.proj(self.dropout(pooled))


# ---------------------------------------------------------------------------------------------
# torchvision backbones with a C-channel first convolution
# ---------------------------------------------------------------------------------------------

SUPPORTED_ARCHS = ("resnet18", "resnet34", "resnet50", "efficientnet_b0", "convnext_tiny")


def _module_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def first_conv_name(model: nn.Module) -> str:
    """Qualified name of the first ``nn.Conv2d`` (the RGB stem) of a backbone."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise ConfigError(f"{type(model).__name__} has no Conv2d layer to adapt")


def replace_first_conv(model: nn.Module, n_channels: int) -> str:
    """Swap the first convolution for one taking ``n_channels`` inputs; returns its name."""
    name = first_conv_name(model)
    old = model.get_submodule(name)
    assert isinstance(old, nn.Conv2d)
    new = nn.Conv2d(
        n_channels,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        groups=old.groups,
        bias=old.bias is not None,
    )
    parent, child = _module_parent(model, name)
    setattr(parent, child, new)
    return name


def strip_classifier(model: nn.Module) -> int:
    """Replace the last ``nn.Linear`` (the ImageNet classifier) by Identity; returns its in dim."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ConfigError(f"{type(model).__name__} has no classifier Linear layer")
    name, linear = last
    parent, child = _module_parent(model, name)
    setattr(parent, child, nn.Identity())
    return linear.in_features


def inflate_conv_weight(weight: Tensor, n_channels: int) -> Tensor:
    """Inflate an RGB filter bank (O, 3, k, k) to ``n_channels`` inputs.

    Each marker gets the mean RGB filter rescaled by 3/C, so a tile whose C channels all equal
    one grey image produces the same activation as that grey image in RGB.
    """
    if weight.shape[1] == n_channels:
        return weight
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, n_channels, 1, 1) * (3.0 / n_channels)


def torchvision_cache_path(arch: str) -> Path:
    """Where torchvision caches the default ImageNet weights of ``arch`` (never downloaded)."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT  # type: ignore[attr-defined]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _load_state_dict_file(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the same user error
        raise ConfigError(f"{path}: cannot read pretrained weights ({err})") from err
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: pretrained weights are not a state dict")
    return obj


def load_inflated_weights(
    model: nn.Module, state_dict: dict[str, Tensor], conv_name: str, source: str
) -> None:
    """Load an RGB backbone state dict into ``model`` whose first conv takes C channels.

    The stem weight is inflated; classifier weights (absent from ``model``) are ignored; any
    missing or mis-shaped backbone parameter is a ``ConfigError`` naming ``source``.
    """
    own = model.state_dict()
    key = f"{conv_name}.weight"
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if key in sd:
        sd[key] = inflate_conv_weight(sd[key], own[key].shape[1])
    usable = {k: v for k, v in sd.items() if k in own}
    missing = [k for k in own if k not in usable]
    if missing:
        raise ConfigError(
            f"{source}: pretrained weights lack {len(missing)} parameters (e.g. {missing[0]!r})"
        )
    for k, v in usable.items():
        if v.shape != own[k].shape:
            raise ConfigError(
                f"{source}: parameter {k!r} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
            )
    model.load_state_dict(usable, strict=True)


class TorchvisionEncoder(nn.Module):
    """A torchvision backbone (built with ``weights=None``) adapted to C-channel tiles.

    ``pretrained_path`` (a ``.pth`` state dict of the RGB model) or, with
    ``pretrained_from_cache``, torchvision's local cache file is loaded and the first conv
    inflated to C channels. Nothing is ever downloaded. ``out_dim`` adds a linear projection.
    """

    def __init__(
        self,
        n_channels: int,
        markers: Sequence[str] | None = None,
        arch: str = "resnet18",
        pretrained_path: str | None = None,
        pretrained_from_cache: bool = False,
        out_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if arch not in SUPPORTED_ARCHS:
            raise ConfigError(f"unsupported backbone {arch!r}; choose one of {SUPPORTED_ARCHS}")
        self.arch = arch
        self.n_channels = n_channels
        backbone = torchvision.models.get_model(arch, weights=None)
        feat_dim = strip_classifier(backbone)
        conv_name = replace_first_conv(backbone, n_channels)
        self.pretrained_source: str | None = None
        source = self._weights_source(pretrained_path, pretrained_from_cache)
        if source is not None:
            load_inflated_weights(backbone, _load_state_dict_file(source), conv_name, str(source))
            self.pretrained_source = str(source)
            log.info("%s: loaded pretrained weights from %s", arch, source)
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.proj: nn.Module = nn.Linear(feat_dim, out_dim) if out_dim else nn.Identity()
        self.out_dim = int(out_dim) if out_dim else feat_dim

    def _weights_source(self, path: str | None, from_cache: bool) -> Path | None:
        if path is not None:
            p = Path(path).expanduser()
            if not p.is_file():
                raise ConfigError(f"{p}: pretrained weights file not found")
            return p
        if from_cache:
            p = torchvision_cache_path(self.arch)
            if p.is_file():
                return p
            log.warning("%s: no cached ImageNet weights at %s; using random init", self.arch, p)
        return None

    def forward(self, x: Tensor, channel_mask: Tensor | None = None) -> Tensor:
        return self.proj(self.dropout(self.backbone(apply_channel_mask(x, channel_mask))))
