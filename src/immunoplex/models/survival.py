"""Cox partial likelihood for the survival head: pure torch, masked, Efron or Breslow ties.

Choice: a **Cox proportional-hazards** loss (not discrete-time hazards). The model's ``risk``
output is a log-hazard ratio; the loss is the negative log partial likelihood

    Breslow:  -sum_i e_i [ r_i - log sum_{j: t_j >= t_i} exp(r_j) ]
    Efron:    -sum over event times t with d tied events D and risk set R:
                 sum_{i in D} r_i - sum_{l=0}^{d-1} log( sum_R exp(r) - l/d sum_D exp(r) )

**The risk set is the batch.** With mini-batches of patients the loss is the partial likelihood
of each batch (the stochastic estimator of DeepSurv, Katzman et al. 2018, and of most MIL
survival models), not of the whole cohort: each term compares a patient with the batch's
patients still at risk. It is exact for a batch that holds every patient (tests compare it with
lifelines' CoxPHFitter), invariant to the order of patients in the batch and to masked padding,
and larger batches give a lower-variance estimate. A batch with no observed event contributes
zero loss (and zero gradient).

**Masking.** ``time`` NaN or ``event`` < 0 (or ``mask`` False) marks a patient without a time for
this endpoint: it is unlabelled, left out of both the events and the risk sets (never a time of
zero). ``reduction="mean"`` divides by the number of observed events in the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

TIES = ("efron", "breslow")


def cox_loss(
    risk: Tensor,
    time: Tensor,
    event: Tensor,
    mask: Tensor | None = None,
    ties: str = "efron",
    reduction: str = "mean",
) -> Tensor:
    """Negative Cox log partial likelihood of one batch (see the module docstring).

    ``risk`` (B,) log-hazards; ``time`` (B,) float, NaN = unlabelled; ``event`` (B,) 1/0 (< 0 =
    unlabelled); ``mask`` (B,) bool, False = leave out. O(B^2) memory: fine for batches of
    patients (B up to a few thousand).
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    dtype = torch.promote_types(risk.dtype, torch.float32)  # float64 stays float64 (tests)
    r = risk.to(dtype).reshape(-1)
    t = time.to(device=r.device, dtype=dtype).reshape(-1)
    e = event.to(device=r.device, dtype=dtype).reshape(-1)
    ok = torch.isfinite(t) & (e >= 0)
    if mask is not None:
        ok = ok & mask.bool().reshape(-1)
    t = torch.where(ok, t, torch.zeros_like(t))
    is_event = ok & (e > 0.5)
    # Stabilise exp(): the partial likelihood is invariant to a shift of every risk.
    shift = torch.where(ok, r, torch.full_like(r, -torch.inf)).max().detach()
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    w = torch.where(ok, torch.exp(r - shift), torch.zeros_like(r))
    # rows: events i; columns: patients j
    at_risk = (t[None, :] >= t[:, None]) & ok[None, :]
    risk_sum = (at_risk.float() * w[None, :]).sum(1)
    if ties == "efron":
        tied = (t[None, :] == t[:, None]) & is_event[None, :] & is_event[:, None]
        d = tied.float().sum(1)
        idx = torch.arange(len(r), device=r.device)
        rank = (tied & (idx[None, :] < idx[:, None])).float().sum(1)  # l = 0 .. d-1
        tied_sum = (tied.float() * w[None, :]).sum(1)
        risk_sum = risk_sum - rank / d.clamp(min=1.0) * tied_sum
    log_den = torch.log(risk_sum.clamp(min=torch.finfo(risk_sum.dtype).tiny)) + shift
    terms = torch.where(is_event, r - log_den, torch.zeros_like(r))
    total = -terms.sum()
    if reduction == "sum":
        return total
    return total / is_event.float().sum().clamp(min=1.0)
