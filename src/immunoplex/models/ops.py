"""Small tensor operations shared by the model modules (masking, MLP building)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from immunoplex.errors import ConfigError

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "selu": nn.SELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    """Return a fresh activation module by name (``relu``, ``gelu``, ``selu``, ``silu``, ``tanh``)."""
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ConfigError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


def mlp_body(
    in_dim: int,
    hidden_dims: Sequence[int],
    *,
    act: str = "gelu",
    dropout: float = 0.0,
    norm: str = "none",
) -> nn.Sequential:
    """Hidden blocks (Linear -> [norm] -> act -> dropout) per hidden dim; empty if none.

    ``act="selu"`` switches dropout to AlphaDropout (self-normalising networks).
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden_dims]
    drop_cls = nn.AlphaDropout if act.lower() == "selu" else nn.Dropout
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        layers.append(nn.Linear(d_in, d_out))
        if norm == "layer":
            layers.append(nn.LayerNorm(d_out))
        elif norm == "batch":
            layers.append(nn.BatchNorm1d(d_out))
        elif norm != "none":
            raise ConfigError(f"unknown norm {norm!r}; choose 'layer', 'batch' or 'none'")
        layers.append(activation(act))
        if dropout > 0:
            layers.append(drop_cls(dropout))
    return nn.Sequential(*layers)


def mlp(
    in_dim: int,
    hidden_dims: Sequence[int],
    out_dim: int,
    *,
    act: str = "gelu",
    dropout: float = 0.0,
    norm: str = "none",
    final_act: bool = False,
) -> nn.Sequential:
    """``mlp_body`` followed by a Linear to ``out_dim`` (and an activation if ``final_act``)."""
    layers = list(mlp_body(in_dim, hidden_dims, act=act, dropout=dropout, norm=norm))
    layers.append(nn.Linear(hidden_dims[-1] if hidden_dims else in_dim, out_dim))
    if final_act:
        layers.append(activation(act))
    return nn.Sequential(*layers)


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` restricted to ``mask``: exact zeros where masked, all-zero rows
    (never NaN) where nothing is valid. Computed in float32."""
    scores = scores.float()
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=dim) * mask
    return weights / weights.sum(dim=dim, keepdim=True).clamp_min(1e-12)


def masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of ``x`` over ``dim`` using only entries where ``mask`` (same leading shape) is True."""
    m = mask.to(x.dtype).unsqueeze(-1)
    x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)


def zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    """Replace entries of ``x`` (..., D) where ``mask`` (...) is False by exact zeros.

    Uses ``torch.where`` so NaN/inf garbage in padding cannot leak into sums or gradients.
    """
    return torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


def safe_key_padding_mask(valid: Tensor) -> Tensor:
    """``key_padding_mask`` (True = ignore) for attention that never has an all-ignored row.

    Rows with no valid key get their first key un-ignored so softmax stays finite; callers must
    discard the output for such rows (e.g. replace it with a missing-modality token).
    """
    has_any = valid.any(dim=-1, keepdim=True)
    first = torch.zeros_like(valid)
    first[..., 0] = True
    return ~torch.where(has_any, valid, first)
