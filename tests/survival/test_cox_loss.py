"""Cox partial likelihood: equal to lifelines (Efron) and torchsurv (Efron, Breslow); masking,
padding and order invariance; the risk set is the batch."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from immunoplex.models.survival import cox_loss


def _data(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    t = np.round(rng.exponential(10.0, n) * np.exp(-x[:, 0])) + 1.0  # many tied times
    e = (rng.random(n) < 0.7).astype(float)
    return x, t, e


def test_efron_equals_lifelines_partial_likelihood() -> None:
    from lifelines import CoxPHFitter

    x, t, e = _data()
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "T": t, "E": e})
    cph = CoxPHFitter().fit(df, "T", "E")
    eta = torch.tensor(x @ cph.params_.to_numpy())
    loss = cox_loss(eta, torch.tensor(t), torch.tensor(e), reduction="sum")
    assert loss.item() == pytest.approx(-cph.log_likelihood_, abs=1e-6)
    mean = cox_loss(eta, torch.tensor(t), torch.tensor(e))
    assert mean.item() == pytest.approx(-cph.log_likelihood_ / e.sum(), abs=1e-8)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_equals_torchsurv(ties: str) -> None:
    from torchsurv.loss.cox import neg_partial_log_likelihood

    x, t, e = _data(seed=1)
    eta = torch.tensor(x @ np.array([0.8, -0.3]))
    ours = cox_loss(eta, torch.tensor(t), torch.tensor(e), ties=ties, reduction="sum")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = neg_partial_log_likelihood(
            eta[:, None], torch.tensor(e).bool(), torch.tensor(t), ties_method=ties, reduction="sum"
        )
    assert ours.item() == pytest.approx(ref.item(), rel=1e-7)  # torchsurv sums in float32


def test_missing_times_are_left_out_not_zero() -> None:
    x, t, e = _data(n=60, seed=2)
    eta = torch.tensor(x[:, 0])
    full = cox_loss(eta[:40], torch.tensor(t[:40]), torch.tensor(e[:40]), reduction="sum")
    tt, ee = t.copy(), e.copy()
    tt[40:50] = np.nan  # unlabelled: no time
    ee[50:] = -1  # unlabelled: no event value
    masked = cox_loss(eta, torch.tensor(tt), torch.tensor(ee), reduction="sum")
    assert masked.item() == pytest.approx(full.item(), abs=1e-9)
    mask = torch.zeros(60, dtype=torch.bool)
    mask[:40] = True
    by_mask = cox_loss(eta, torch.tensor(t), torch.tensor(e), mask=mask, reduction="sum")
    assert by_mask.item() == pytest.approx(full.item(), abs=1e-9)
    zero = tt.copy()
    zero[40:50] = 0.0  # what a zero-filled time would do: a different (wrong) loss
    wrong = cox_loss(eta[:50], torch.tensor(zero[:50]), torch.tensor(e[:50]), reduction="sum")
    assert abs(wrong.item() - full.item()) > 1e-3


def test_batch_order_padding_and_gradients() -> None:
    x, t, e = _data(n=32, seed=3)
    eta = torch.tensor(x[:, 0], requires_grad=True)
    base = cox_loss(eta, torch.tensor(t), torch.tensor(e))
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    shuffled = cox_loss(eta[perm], torch.tensor(t)[perm], torch.tensor(e)[perm])
    assert shuffled.item() == pytest.approx(base.item(), abs=1e-10)
    shifted = cox_loss(eta + 100.0, torch.tensor(t), torch.tensor(e))  # shift-invariant, stable
    assert shifted.item() == pytest.approx(base.item(), abs=1e-8)
    base.backward()
    assert torch.isfinite(eta.grad).all() and eta.grad.abs().sum() > 0
    # float32 batch (as in training) agrees with float64
    f32 = cox_loss(eta.detach().float(), torch.tensor(t).float(), torch.tensor(e).float())
    assert f32.item() == pytest.approx(base.item(), rel=1e-5)


def test_batch_without_events_gives_zero_loss_and_gradient() -> None:
    eta = torch.randn(5, requires_grad=True)
    loss = cox_loss(eta, torch.arange(5.0) + 1, torch.zeros(5))
    loss.backward()
    assert loss.item() == 0.0 and eta.grad.abs().sum() == 0
    all_masked = cox_loss(eta, torch.full((5,), float("nan")), torch.ones(5))
    assert all_masked.item() == 0.0
