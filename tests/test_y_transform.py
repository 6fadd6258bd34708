#!/usr/bin/env python3
r"""`PFNModel(y_transform=...)`: the PFN on `g(y)`, the posterior mapped back through `g^{-1}`."""

import pytest
import torch
from botorch.exceptions.errors import UnsupportedError
from botorch.models.transforms.outcome import (
    Bilog,
    ChainedOutcomeTransform,
    Log,
    Power,
    Standardize,
)
from botorch_community.acquisition.discretized import DiscretizedLogExpectedImprovement
from botorch_community.models.prior_fitted_network import (
    MultivariatePFNModel,
    PFNModel,
)
from botorch_community.pfn.testing import random_pfn


@pytest.fixture
def net():
    return random_pfn(num_features=4, emsize=32, nlayers=2, nhead=2, nhid=48, noise_hint=True)


def _data(n=12, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    Y = (4 * X).exp().sum(-1, keepdim=True)  # positive and skewed
    return X, Y


def _bilog(y):
    return y.sign() * y.abs().log1p()


def _bilog_inv(z):
    return z.sign() * z.abs().expm1()


def test_bilog_is_the_pfn_on_transformed_targets(net):
    X, Y = _data()
    x = torch.rand(5, 1, 3, dtype=torch.float64)
    post = PFNModel(X, Y, model=net, y_transform=Bilog()).posterior(x)
    manual = PFNModel(X, _bilog(Y), model=net).posterior(x)
    torch.testing.assert_close(post.probabilities, manual.probabilities, atol=1e-12, rtol=0)
    torch.testing.assert_close(post.borders, _bilog_inv(manual.borders), atol=1e-9, rtol=1e-9)
    assert bool((post.borders[1:] > post.borders[:-1]).all())
    # medians map exactly (monotone map; the bar CDF is linear within a bucket only in
    # one space, so compare at a bucket border: the CDF at mapped borders is the same)
    torch.testing.assert_close(post.cdf(post.borders[30].expand(5, 1)),
                               manual.cdf(manual.borders[30].expand(5, 1)), atol=1e-9, rtol=0)


def test_log_and_chains(net):
    X, Y = _data()
    x = torch.rand(3, 1, 3, dtype=torch.float64)
    for tf, g in [(Log(), torch.log),
                  (ChainedOutcomeTransform(a=Log(), b=Bilog()), lambda y: _bilog(y.log()))]:
        post = PFNModel(X, Y, model=net, y_transform=tf).posterior(x)
        manual = PFNModel(X, g(Y), model=net).posterior(x)
        torch.testing.assert_close(post.probabilities, manual.probabilities, atol=1e-12, rtol=0)


def test_noise_variances_map_by_the_delta_method(net):
    X, Y = _data()
    Yvar = torch.full_like(Y, 0.3)
    x = torch.rand(4, 1, 3, dtype=torch.float64)
    post = PFNModel(X, Y, model=net, train_Yvar=Yvar, y_transform=Log()).posterior(x)
    manual = PFNModel(X, Y.log(), model=net, train_Yvar=Yvar / Y**2).posterior(x)
    torch.testing.assert_close(post.probabilities, manual.probabilities, atol=1e-12, rtol=0)


def test_cached_equals_reference_and_acquisition_gradients(net):
    X, Y = _data()
    ms = [PFNModel(X, Y, model=net, y_transform=Bilog(), cache_context=c) for c in (True, False)]
    x = torch.rand(6, 1, 3, dtype=torch.float64, requires_grad=True)
    res = []
    for m in ms:
        v = DiscretizedLogExpectedImprovement(m, best_f=Y.max())(x)
        (g,) = torch.autograd.grad(v.sum(), x)
        assert torch.isfinite(v).all() and torch.isfinite(g).all()
        res.append((v.detach(), g))
    torch.testing.assert_close(res[0][0], res[1][0], atol=1e-10, rtol=0)
    torch.testing.assert_close(res[0][1], res[1][1], atol=1e-8, rtol=0)


def test_multivariate_correlations_are_those_of_the_transformed_model(net):
    X, Y = _data()
    x = torch.rand(2, 3, 3, dtype=torch.float64)
    a = MultivariatePFNModel(X, Y, model=net, y_transform=Bilog()).posterior(x)
    b = MultivariatePFNModel(X, _bilog(Y), model=net).posterior(x)
    torch.testing.assert_close(a.correlation_matrix, b.correlation_matrix, atol=1e-10, rtol=0)


def test_bad_transforms_and_targets(net):
    X, Y = _data()
    for tf in (Standardize(m=1), Power(0.5), ChainedOutcomeTransform(a=Bilog(), b=Standardize(m=1))):
        with pytest.raises(UnsupportedError, match="increasing elementwise"):
            PFNModel(X, Y, model=net, y_transform=tf)
    with pytest.raises(ValueError, match="Log needs positive targets"):
        PFNModel(X, Y - Y.mean(), model=net, y_transform=Log())
    m = PFNModel(X, Y, model=net, y_transform=Bilog())
    with pytest.raises(UnsupportedError, match="negate_train_ys"):
        m.posterior(torch.rand(2, 3, dtype=torch.float64), negate_train_ys=True)


def test_condition_on_observations_keeps_the_transform(net):
    X, Y = _data()
    m = PFNModel(X[:9], Y[:9], model=net, y_transform=Bilog())
    m2 = m.condition_on_observations(X[9:], Y[9:])
    x = torch.rand(3, 3, dtype=torch.float64)
    full = PFNModel(X, Y, model=net, y_transform=Bilog())
    torch.testing.assert_close(m2.posterior(x).mean, full.posterior(x).mean)
