#!/usr/bin/env python3
r"""The shipped network's predictive where BO looks: at an incumbent far above the rest.

Noise-free contexts (``train_Yvar = 0``) of a smooth function with one narrow peak whose
top, the incumbent, lies `z = 3 .. 20` standard deviations above the mean of the other
targets (as in BO, where the best point sits far in the upper tail of what was seen),
the other targets on the peak's shoulders: at every observed point the predictive mean
is within 0.1 standard deviations of `y` of the observation and the predictive
standard deviation is at most 0.1. Coverage of held-out points near the incumbent
(central 50% / 90% intervals within 10 points of nominal, pooled) is a known gap.
"""

import pytest
import torch
from botorch_community.models.prior_fitted_network import PFNModel

D, N_BULK, WIDTH, N_NEAR = 3, 40, 0.1, 3


def _base(X):
    return torch.sin(3 * X).sum(-1) + 0.5 * torch.cos(5 * X[..., 0])


def _peak_context(z: float, seed: int, r_near: float = 0.2):
    r"""`(f, X, x0)`: a function with a peak at `x0` whose top lies `z` standard
    deviations above the mean of the other observed targets, and its context."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(D, generator=g, dtype=torch.float64) * 0.6 + 0.2
    bulk = torch.rand(N_BULK, D, generator=g, dtype=torch.float64)
    u = torch.randn(N_NEAR, D, generator=g, dtype=torch.float64)
    near = x0 + r_near * u / u.norm(dim=-1, keepdim=True)  # on the peak's shoulders
    X = torch.cat([bulk, near, x0[None]])
    bump = torch.exp(-((X - x0) ** 2).sum(-1) / (2 * WIDTH**2))

    def z_of(A):
        y = _base(X) + A * bump
        rest = y[:-1]
        return float((y[-1] - rest.mean()) / rest.std())

    lo, hi = 0.0, 1e6  # the peak height for `z` (z_of increases in A here)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if z_of(mid) < z else (lo, mid)
    A = 0.5 * (lo + hi)
    f = lambda Z: _base(Z) + A * torch.exp(-((Z - x0) ** 2).sum(-1) / (2 * WIDTH**2))
    return f, X, x0


@pytest.fixture(scope="module")
def contexts():
    return [(z, seed, *_peak_context(z, seed)) for z in (3, 5, 10) for seed in range(2)]


def _model(X, Y, predictive):
    return PFNModel(X, Y, train_Yvar=torch.zeros_like(Y), predictive=predictive)


@pytest.mark.parametrize("predictive", ["gp"])
def test_predictive_at_the_observations(contexts, predictive):
    for z, seed, f, X, x0 in contexts:
        Y = f(X).unsqueeze(-1)
        assert abs(float((Y[-1] - Y[:-1].mean()) / Y[:-1].std()) - z) < 1e-3
        sy = float(Y.std())
        post = _model(X, Y, predictive).posterior(X.unsqueeze(-2))
        err = (post.mean.reshape(-1) - Y.reshape(-1)).abs() / sy
        sd = post.variance.sqrt().reshape(-1) / sy
        assert float(err.max()) <= 0.1, (z, seed, float(err.max()))
        assert float(sd.max()) <= 0.1, (z, seed, float(sd.max()))


@pytest.mark.xfail(
    strict=True,
    reason="known gap: near an isolated incumbent the GP head's particles are "
    "overconfident (pooled coverage 0.32 / 0.64 for nominal 0.5 / 0.9); a fitted "
    "SingleTaskGP on the same contexts: 0.29 / 0.58 (one stationary lengthscale cannot "
    "fit the narrow peak and the smooth base; train_Yvar=1e-6, Standardize)",
)
@pytest.mark.parametrize("predictive", ["gp"])
def test_coverage_near_the_incumbent(contexts, predictive):
    inside50, inside90 = [], []
    for z, seed, f, X, x0 in contexts:
        Y = f(X).unsqueeze(-1)
        model = _model(X, Y, predictive)
        g = torch.Generator().manual_seed(100 + seed)
        H = x0 + 0.1 * (torch.rand(100, D, generator=g, dtype=torch.float64) - 0.5)  # +-0.05
        yh = f(H)
        ph = model.posterior(H.unsqueeze(-2))
        q = {a: ph.quantile(torch.tensor([a], dtype=torch.float64)).reshape(-1)
             for a in (0.05, 0.25, 0.75, 0.95)}  # fmt: skip
        inside50.append(((yh >= q[0.25]) & (yh <= q[0.75])).double().mean())
        inside90.append(((yh >= q[0.05]) & (yh <= q[0.95])).double().mean())
    c50, c90 = float(torch.stack(inside50).mean()), float(torch.stack(inside90).mean())
    assert abs(c50 - 0.5) <= 0.1, c50
    assert abs(c90 - 0.9) <= 0.1, c90
