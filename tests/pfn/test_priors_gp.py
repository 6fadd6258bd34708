#!/usr/bin/env python3
r"""The GP prior: shapes, seeding, kernel statistics, irrelevant dimensions."""

import math

import pytest
import torch
from botorch_community.pfn.priors import (
    GPHyperparameters,
    GPPriorConfig,
    sample_gamma,
    sample_gp_prior,
    sample_hyperparameters,
    sample_targets,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _hypers(b, d, *, matern=True, ls=(0.3, 0.7), active=None, outputscale=1.7, noise=0.05):
    ls = torch.tensor(ls, dtype=torch.float64).expand(b, d).clone()
    act = torch.ones(b, d, dtype=torch.bool) if active is None else torch.tensor(active).expand(b, d)
    one = torch.ones(b, d, dtype=torch.float64)
    return GPHyperparameters(
        lengthscale=ls,
        active=act.clone(),
        outputscale=torch.full((b,), outputscale, dtype=torch.float64),
        noise_var=torch.full((b,), noise, dtype=torch.float64),
        is_matern=torch.full((b,), matern),
        warp_a=one.clone(),
        warp_b=one.clone(),
        mean_weight=torch.zeros(b, d, dtype=torch.float64),
    )


def test_shapes_and_ranges():
    batch = sample_gp_prior(5, 12, dim=3, generator=_gen())
    assert batch.X.shape == (5, 12, 3) and batch.Y.shape == (5, 12, 1)
    assert batch.f.shape == (5, 12, 1) and batch.X.dtype == torch.float32
    assert float(batch.X.min()) >= 0 and float(batch.X.max()) <= 1
    h = batch.hypers
    assert h.lengthscale.shape == (5, 3) and h.active.shape == (5, 3)
    assert h.outputscale.shape == (5,) and h.noise_var.shape == (5,)
    assert bool(h.active.any(-1).all())  # at least one relevant dimension
    assert torch.isfinite(batch.Y).all()
    # d drawn per batch within [min_dim, max_dim]
    cfg = GPPriorConfig(num_features=6, min_dim=2, max_dim=4)
    dims = {sample_gp_prior(2, 3, cfg, generator=_gen(s)).X.shape[-1] for s in range(30)}
    assert dims <= {2, 3, 4} and len(dims) > 1


def test_seeding_reproducible():
    a = sample_gp_prior(4, 10, generator=_gen(3))
    b = sample_gp_prior(4, 10, generator=_gen(3))
    c = sample_gp_prior(4, 10, generator=_gen(4))
    assert torch.equal(a.X, b.X) and torch.equal(a.Y, b.Y) and torch.equal(a.f, b.f)
    for k, v in a.hypers.as_dict().items():
        assert torch.equal(v, b.hypers.as_dict()[k]), k
    assert a.X.shape != c.X.shape or not torch.equal(a.Y, c.Y)


@pytest.mark.parametrize("matern", [True, False])
def test_empirical_covariance_matches_kernel(matern):
    B, d = 6000, 2
    X1 = torch.tensor([[0.1, 0.2], [0.15, 0.3], [0.5, 0.5], [0.9, 0.1], [0.52, 0.48]])
    hyp = _hypers(B, d, matern=matern)
    X = X1.expand(B, -1, -1)
    f, Y = sample_targets(hyp, X, _gen(1))
    f = f.squeeze(-1)
    emp = torch.cov(f.T)
    K = hyp.index(slice(0, 1)).covariance(X1.unsqueeze(0))[0]
    torch.testing.assert_close(emp, K, atol=0.1, rtol=0.0)
    torch.testing.assert_close(f.mean(0), torch.zeros(5, dtype=f.dtype), atol=0.1, rtol=0)
    noise = (Y.squeeze(-1) - f).var(0)
    torch.testing.assert_close(noise, torch.full_like(noise, 0.05), atol=0.006, rtol=0)
    # kernel values by hand for one pair
    r = math.sqrt(((0.1 - 0.15) / 0.3) ** 2 + ((0.2 - 0.3) / 0.7) ** 2)
    k = (1 + math.sqrt(5) * r + 5 / 3 * r**2) * math.exp(-math.sqrt(5) * r) if matern else math.exp(-r * r / 2)
    assert abs(float(K[0, 1]) - 1.7 * k) < 1e-6  # X1 is float32


def test_irrelevant_dimensions_are_irrelevant():
    B, L = 3, 8
    hyp = _hypers(B, 3, active=[True, False, True], ls=(0.3, 0.01, 0.5))
    X = torch.rand(B, L, 3, generator=_gen(0), dtype=torch.float64)
    X2 = X.clone()
    X2[..., 1] = torch.rand(B, L, generator=_gen(1), dtype=torch.float64)
    torch.testing.assert_close(hyp.covariance(X), hyp.covariance(X2), atol=0, rtol=0)
    f1, y1 = sample_targets(hyp, X, _gen(5))
    f2, y2 = sample_targets(hyp, X2, _gen(5))
    assert torch.equal(f1, f2) and torch.equal(y1, y2)
    # the sampled hyperparameters drop about irrelevant_prob of the dimensions
    h = sample_hyperparameters(4000, 6, GPPriorConfig(), _gen(2))
    share = 1.0 - h.active.double().mean()
    assert 0.22 < float(share) < 0.32  # 0.3, minus the forced-active ones
    assert bool(h.active.any(-1).all())


def test_gamma_sampler_moments():
    x = sample_gamma(0.8452, 0.3994, (100_000,), _gen(0))
    assert abs(float(x.mean()) - 0.8452 / 0.3994) < 0.05
    assert abs(float(x.var()) - 0.8452 / 0.3994**2) < 0.3
    assert float(x.min()) > 0


def test_warping_and_oracle_predictive():
    h = _hypers(2, 1, ls=(0.3,), noise=1e-6)
    X = torch.linspace(0, 1, 7, dtype=torch.float64).view(1, 7, 1).expand(2, -1, -1)
    torch.testing.assert_close(h.warp(X), X)  # a = b = 1: identity
    h.warp_a[:] = 2.0
    h.warp_b[:] = 0.5
    W = h.warp(X)
    assert bool((W[:, 1:] >= W[:, :-1]).all()) and float(W[0, 0]) == 0 and float(W[0, -1]) == 1
    # oracle: n = 0 gives the prior; near noise-free data is interpolated
    h = _hypers(2, 1, ls=(0.3,), noise=1e-6)
    f, Y = sample_targets(h, X, _gen(0))
    mu0, var0 = h.predictive(X[:, :0], Y[:, :0], X)
    torch.testing.assert_close(mu0, torch.zeros_like(mu0))
    torch.testing.assert_close(var0, torch.full_like(var0, 1.7 + 1e-6))
    mu, var = h.predictive(X, Y, X, noisy=False)
    torch.testing.assert_close(mu, Y, atol=1e-3, rtol=0)
    assert float(var.max()) < 1e-5


def test_config_roundtrip_and_validation():
    cfg = GPPriorConfig(num_features=5, local_x_prob=0.5)
    assert GPPriorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="Unknown"):
        GPPriorConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError):
        GPPriorConfig(num_features=3, max_dim=4)
    b = sample_gp_prior(3, 20, cfg, dim=5, generator=_gen(0))  # clustered inputs
    assert float(b.X.min()) >= 0 and float(b.X.max()) <= 1


def test_local_x_exact_rows_repeat_inputs():
    # every row moved, all exactly onto a source row: inputs repeat, and a repeated
    # input's targets differ by observation noise only
    cfg = GPPriorConfig(
        num_features=3, local_x_prob=1.0, local_x_share=1.0, local_x_exact_share=1.0,
        noise_low=(1e-6, 1e-6), noise_high=(1e-6, 1e-6),
    )
    b = sample_gp_prior(4, 40, cfg, dim=3, generator=_gen(1))
    for X, Y in zip(b.X, b.Y):
        uniq, inverse = torch.unique(X, dim=0, return_inverse=True)
        assert uniq.shape[0] < X.shape[0]  # repeated rows
        for k in range(uniq.shape[0]):
            ys = Y[inverse == k]
            assert float(ys.max() - ys.min()) < 0.02 * float(Y.std())
    # a zero share keeps the random stream of configs without the option
    base = GPPriorConfig(num_features=3, local_x_prob=0.5)
    zero = GPPriorConfig(num_features=3, local_x_prob=0.5, local_x_exact_share=0.0)
    b0 = sample_gp_prior(2, 30, base, dim=3, generator=_gen(2))
    b1 = sample_gp_prior(2, 30, zero, dim=3, generator=_gen(2))
    assert torch.equal(b0.X, b1.X) and torch.equal(b0.Y, b1.Y)
