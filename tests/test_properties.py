#!/usr/bin/env python3
r"""Property-based tests (hypothesis) of PFN models, posteriors and acquisitions.

Over random batch shapes, input dimensions `d`, training-set sizes `n` (including 0),
`q`, dtypes, target scales and pending points:

* the cached context equals the reference path, in probabilities, correlations and
  gradients w.r.t. the test inputs;
* posteriors are valid distributions (probabilities sum to one, the cdf is monotone
  from 0 to 1, ``icdf(cdf(y)) == y`` inside the support);
* the discretized EI and LogEI are finite, with finite gradients.

Tiny networks and few examples (derandomized, so CI is reproducible): seconds in all.
"""

import pytest
import torch
from botorch.acquisition.objective import ScalarizedPosteriorTransform
from botorch_community.acquisition.discretized import (
    DiscretizedExpectedImprovement,
    DiscretizedLogExpectedImprovement,
)
from botorch_community.models.prior_fitted_network import (
    MultivariatePFNModel,
    PFNModel,
)
from botorch_community.pfn.testing import random_pfn
from hypothesis import given, HealthCheck, settings, strategies as st

NET = random_pfn(num_features=4, emsize=16, nlayers=2, nhead=2, nhid=32, num_buckets=32)
SETTINGS = dict(
    deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def cases(draw, max_batch_dims=2, q_max=3):
    r"""A random problem: data, test inputs and pending points."""
    c = dict(
        batch_shape=tuple(
            draw(st.lists(st.integers(1, 3), min_size=0, max_size=max_batch_dims))
        ),
        d=draw(st.integers(1, 4)),
        n=draw(st.integers(0, 10)),
        q=draw(st.integers(1, q_max)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        n_pending=draw(st.integers(0, 2)),
        scale=draw(st.sampled_from([1e-3, 1.0, 1e4])),
        offset=draw(st.sampled_from([0.0, -3.0, 5.0])),
        seed=draw(st.integers(0, 2**16)),
    )
    g = torch.Generator().manual_seed(c["seed"])
    dt, d, n = c["dtype"], c["d"], c["n"]
    c["train_X"] = torch.rand(n, d, generator=g, dtype=dt)
    Y = torch.randn(n, 1, generator=g, dtype=torch.float64) + c["train_X"].sum(-1, True)
    c["train_Y"] = (Y * c["scale"] + c["offset"] * c["scale"]).to(dt)
    c["X"] = torch.rand(*c["batch_shape"], c["q"], d, generator=g, dtype=dt)
    c["pending_X"] = (
        torch.rand(c["n_pending"], d, generator=g, dtype=dt) if c["n_pending"] else None
    )
    return c


def _pair(c, cls=PFNModel):
    return [
        cls(c["train_X"], c["train_Y"], model=NET, cache_context=cache)
        for cache in (True, False)
    ]


def _close(a, b, atol):
    torch.testing.assert_close(a, b, atol=atol * max(1.0, b.abs().max().item()), rtol=0)


@settings(max_examples=30, **SETTINGS)
@given(c=cases(), multivariate=st.booleans())
def test_cached_equals_reference(c, multivariate):
    cls = MultivariatePFNModel if multivariate else PFNModel
    cached, reference = _pair(c, cls)
    w = torch.randn(NET.num_buckets, generator=torch.Generator().manual_seed(1), dtype=c["dtype"])
    outs = []
    for m in (cached, reference):
        X = c["X"].clone().requires_grad_(True)
        post = m.posterior(X, pending_X=c["pending_X"])
        assert post.probabilities.shape == (*c["batch_shape"], c["q"], NET.num_buckets)
        assert post.probabilities.dtype == c["dtype"]
        obj = (post.probabilities * w).sum()
        R = getattr(post, "correlation_matrix", None)
        if R is not None:
            obj = obj + R.sum()
        (g,) = torch.autograd.grad(obj, X)
        assert torch.isfinite(g).all()
        outs.append((post.probabilities.detach(), g, R))
    (p0, g0, R0), (p1, g1, R1) = outs
    _close(p0, p1, 1e-5)
    if R0 is None:
        _close(g0, g1, 1e-5 * 10)  # gradients go through a few more float32 ops
    else:
        _close(R0.detach(), R1.detach(), 1e-5 * 10)
        _close(g0, g1, 1e-4 * 10)  # correlations amplify round-off (1 / sigma)
    assert cached.num_encodings == 1


@settings(max_examples=30, **SETTINGS)
@given(c=cases(), weight=st.sampled_from([None, 1.0, -1.0, 0.5, -1e3]))
def test_posterior_is_a_valid_distribution(c, weight):
    m = PFNModel(c["train_X"], c["train_Y"], model=NET)
    tf = None
    if weight is not None:
        tf = ScalarizedPosteriorTransform(weights=torch.tensor([weight], dtype=c["dtype"]), offset=2.0)
    post = m.posterior(c["X"], pending_X=c["pending_X"], posterior_transform=tf)
    p, b = post.probabilities, post.borders
    eps = 1e-5 if c["dtype"] == torch.float32 else 1e-12
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones_like(p[..., 0]), atol=eps, rtol=0)
    assert (b[1:] > b[:-1]).all() and torch.isfinite(b).all()
    lo, hi = b[0], b[-1]
    assert ((post.mean >= lo) & (post.mean <= hi)).all()
    assert (post.variance > 0).all() and torch.isfinite(post.variance).all()
    # cdf: monotone from 0 (below the support) to 1 (above), over a grid of outcomes
    span = hi - lo
    ys = torch.linspace(0, 1, 101, dtype=c["dtype"]) * 1.2 * span + lo - 0.1 * span
    grid = ys.view(-1, *([1] * (p.dim() - 1))).expand(-1, *p.shape[:-1])
    cdf = post.cdf(grid)  # `101 x batch x q`
    assert (cdf[1:] >= cdf[:-1] - eps).all()
    torch.testing.assert_close(cdf[0], torch.zeros_like(cdf[0]), atol=eps, rtol=0)
    torch.testing.assert_close(cdf[-1], torch.ones_like(cdf[-1]), atol=eps, rtol=0)
    # icdf(cdf(y)) == y inside the support, where the density is not negligible
    inside = grid[10:-10]
    back = post.icdf(post.cdf(inside)).squeeze(-1)
    density = post.log_prob(inside).exp() * span
    ok = density > 1e-2
    tol = (1e-3 if c["dtype"] == torch.float32 else 1e-9) * span
    assert ((back - inside).abs()[ok] <= tol).all()


@settings(max_examples=30, **SETTINGS)
@given(
    c=cases(max_batch_dims=1, q_max=1),
    best_f_shift=st.sampled_from([-10.0, 0.0, 0.5, 3.0, 1e3]),
    maximize=st.booleans(),
)
def test_acquisition_values_and_gradients_are_finite(c, best_f_shift, maximize):
    m = PFNModel(c["train_X"], c["train_Y"], model=NET)
    Y = c["train_Y"]
    ref = (Y.max() if maximize else Y.min()) if len(Y) else torch.tensor(0.0)
    sd = Y.std() if len(Y) > 1 else torch.tensor(1.0)
    best_f = float(ref + (1 if maximize else -1) * best_f_shift * sd)
    X = c["X"].reshape(-1, 1, c["d"]).clone().requires_grad_(True)
    values = {}
    for cls in (DiscretizedExpectedImprovement, DiscretizedLogExpectedImprovement):
        acqf = cls(m, best_f=best_f, maximize=maximize, X_pending=c["pending_X"])
        v = acqf(X)
        assert v.shape == X.shape[:1]
        assert torch.isfinite(v).all(), (cls.__name__, v)
        (g,) = torch.autograd.grad(v.sum(), X)
        assert torch.isfinite(g).all(), (cls.__name__, g)
        values[cls] = v.detach()
    ei, log_ei = values.values()
    assert (ei >= 0).all()
    big = ei > 1e-6 * max(1.0, float(ei.max()))
    torch.testing.assert_close(log_ei[big].exp(), ei[big], rtol=1e-3, atol=0)
