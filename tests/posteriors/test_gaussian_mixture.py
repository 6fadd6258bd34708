#!/usr/bin/env python3
r"""The Gaussian-mixture Riemann posterior: closed-form and quadrature EI / log EI / PI
against brute-force integrals, its bar view, moments, affine maps and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from botorch_community.pfn.target_map import TargetMap
from botorch_community.posteriors.gaussian_mixture import (
    GaussianMixtureRiemannPosterior,
    IncreasingOutcomeMap,
)
from botorch_community.posteriors.riemann import BoundedRiemannPosterior

DT = torch.float64


def _skewed_map() -> TargetMap:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(60, 1, generator=g, dtype=DT).exp().square() * 3 + 100
    tmap = TargetMap.fit(y)
    assert tmap.warped  # the nonlinear case is exercised
    return tmap


def _outcome_map(warped: bool) -> IncreasingOutcomeMap:
    if warped:
        t = _skewed_map()
        return IncreasingOutcomeMap(t.inverse, t.forward, base_knots=t.latent_knots)
    std, mean = torch.tensor(2.5, dtype=DT), torch.tensor(-3.0, dtype=DT)
    return IncreasingOutcomeMap(lambda t: t * std + mean, lambda y: (y - mean) / std,
                                base_affine=(std, mean))  # fmt: skip


def _posterior(warped: bool, n: int = 20, J: int = 3, seed: int = 1) -> GaussianMixtureRiemannPosterior:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, 1, J, generator=g, dtype=DT) * 2
    sd = torch.rand(n, 1, J, generator=g, dtype=DT) + 1e-2
    sd[:4] = 1e-3  # nearly observed points
    log_w = torch.log_softmax(torch.randn(1, 1, J, generator=g, dtype=DT), -1)
    latent = torch.linspace(-30, 30, 2001, dtype=DT)
    return GaussianMixtureRiemannPosterior(mu, sd, log_w, latent, _outcome_map(warped))


def _brute_force(post: GaussianMixtureRiemannPosterior, fn) -> torch.Tensor:
    r"""`E[fn(Y)]` per point by the trapezoid rule in each component's own units."""
    v = torch.linspace(-38, 38, 100001, dtype=DT)
    phi = torch.exp(-v.square() / 2) / math.sqrt(2 * math.pi)
    mu, sd, w = post.means, post.stds, post.log_weights.exp()  # `n x 1 x J`
    out = torch.zeros(mu.shape[:-1], dtype=DT)
    for j in range(mu.shape[-1]):
        y = post.outcome_map(mu[..., j, None] + sd[..., j, None] * v)  # `n x 1 x V`
        out += w[..., j] * torch.trapezoid(fn(y) * phi, v, dim=-1)
    return out


@pytest.mark.parametrize("warped", [False, True])
@pytest.mark.parametrize("offset", [0.0, 3.0, -6.0, 40.0])
def test_expected_improvement_matches_brute_force(warped, offset):
    post = _posterior(warped)
    ys = post.outcome_map(post.means)
    best_f = torch.quantile(ys, 0.7) + offset  # incumbents inside and far above the bulk
    ei = post.log_expected_improvement(best_f).exp()
    ref = _brute_force(post, lambda y: (y - best_f).clamp_min(0))
    ok = ref > 1e-30
    torch.testing.assert_close(ei[ok], ref[ok], rtol=1e-5, atol=0)
    tail = ref > 1e-250  # deep in the tail the trapezoid is coarser: compare the logs
    assert int(tail.sum()) > 5
    torch.testing.assert_close(ei[tail].log(), ref[tail].log(), rtol=0, atol=1e-3)
    pi = post.probability_of_improvement(best_f)
    ref_pi = _brute_force(post, lambda y: (y > best_f).to(DT))
    torch.testing.assert_close(pi, ref_pi, rtol=0, atol=2e-4)  # the step: the trapezoid's error


@pytest.mark.parametrize("warped", [False, True])
def test_log_ei_is_finite_far_beyond_the_mixture(warped):
    r"""Where EI underflows to zero, its log stays finite, decreasing and differentiable."""
    post = _posterior(warped)
    mu = post.means.clone().requires_grad_(True)
    post = GaussianMixtureRiemannPosterior(mu, post.stds, post.log_weights, post.latent_borders,
                                           post.outcome_map)  # fmt: skip
    far = post.outcome_map(torch.tensor(60.0, dtype=DT)).detach()
    log_ei = post.log_expected_improvement(far)
    assert torch.isfinite(log_ei).all() and float(log_ei.max()) < -100
    assert (post.log_expected_improvement(far + 1.0) < log_ei).all()
    (g,) = torch.autograd.grad(log_ei.sum(), mu)
    assert torch.isfinite(g).all() and (g.sum(-1) > 0).all()  # a higher mean helps


@pytest.mark.parametrize("warped", [False, True])
def test_gradients_match_finite_differences(warped):
    base = _posterior(warped, n=6)
    best_f = torch.quantile(base.outcome_map(base.means), 0.6)

    def log_ei(mu, sd):
        p = GaussianMixtureRiemannPosterior(mu, sd, base.log_weights[1:], base.latent_borders,
                                            base.outcome_map)  # fmt: skip
        return p.log_expected_improvement(best_f)

    mu = base.means[1:].clone().requires_grad_(True)  # leave out the 1e-3 stds: FD steps
    sd = base.stds[1:].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(log_ei, (mu, sd), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("warped", [False, True])
def test_bar_view_moments_and_buckets(warped):
    post = _posterior(warped)
    probs = post.probabilities
    assert probs.shape == (20, 1, 2000)
    torch.testing.assert_close(probs.sum(-1), torch.ones(20, 1, dtype=DT))
    bars = BoundedRiemannPosterior(post.borders, probs)
    # the mixture's moments, to the bar view's discretisation error
    ref_mean = _brute_force(post, lambda y: y)
    torch.testing.assert_close(post.mean.squeeze(-1), ref_mean, rtol=1e-7, atol=1e-9)
    ref_var = _brute_force(post, lambda y: y.square()) - ref_mean.square()
    torch.testing.assert_close(post.variance.squeeze(-1), ref_var, rtol=1e-5, atol=1e-8)
    wide = post.stds.amin(-1) > 0.1  # `n x 1`: buckets resolve these
    torch.testing.assert_close(bars.mean[..., 0][wide], post.mean[..., 0][wide], rtol=1e-3, atol=1e-3)
    # EI on the buckets approximates the mixture's
    best_f = torch.quantile(post.mean, 0.5)
    ei_bars = bars.integrate(
        lambda lo, up: torch.where(best_f <= lo, (up - lo) * ((lo + up) / 2 - best_f),
                                   torch.where(best_f < up, (up - best_f).square() / 2, 0 * lo))
    )  # fmt: skip
    ei = post.expected_improvement(best_f)
    big = ei > 1e-3 * float(ei.max())
    torch.testing.assert_close(ei_bars[big & wide], ei[big & wide], rtol=2e-2, atol=0)


@pytest.mark.parametrize("warped", [False, True])
@pytest.mark.parametrize("scale", [-1.0, 0.5, -3.0])
def test_affine_maps_are_exact(warped, scale):
    r"""`scale * Y + shift` (Ax's minimisation: scale -1): same EI as brute force on the
    mapped outcome, moments mapped, and the bucket view mirrored."""
    post = _posterior(warped, n=12)
    shift = 7.0
    mapped = post.affine(scale, shift)
    assert isinstance(mapped, GaussianMixtureRiemannPosterior)
    torch.testing.assert_close(mapped.mean, scale * post.mean + shift)
    torch.testing.assert_close(mapped.variance, scale**2 * post.variance)
    assert (mapped.borders[1:] > mapped.borders[:-1]).all()
    bars = BoundedRiemannPosterior(post.borders, post.probabilities).affine(scale, shift)
    torch.testing.assert_close(mapped.borders, bars.borders)
    torch.testing.assert_close(mapped.probabilities, bars.probabilities)
    best_f = torch.quantile(mapped.mean, 0.6)
    ref = _brute_force(post, lambda y: (scale * y + shift - best_f).clamp_min(0))
    ei = mapped.expected_improvement(best_f)
    ok = ref > 1e-200
    torch.testing.assert_close(ei[ok], ref[ok], rtol=1e-5, atol=0)
    assert post.affine(1.0, 0.0) is post


def test_affine_closed_form_is_botorchs_log_ei():
    r"""One component, affine map: exactly BoTorch's analytic LogEI formula."""
    from botorch.acquisition.analytic import _log_ei_helper

    post = _posterior(False, J=1)
    kappa, lam = post.outcome_map.affine
    m, s = kappa * post.means[..., 0] + lam, kappa * post.stds[..., 0]
    best_f = torch.tensor(0.5, dtype=DT)
    expected = s.log() + _log_ei_helper((m - best_f) / s)
    torch.testing.assert_close(post.log_expected_improvement(best_f), expected)


def test_both_branches_path_equals_the_indexed_one(monkeypatch):
    r"""Off the CPU every component runs both branches (no host sync): same values and
    gradients as the CPU's index selection."""
    import botorch_community.posteriors.gaussian_mixture as gm

    base = _posterior(True)
    best_f = torch.quantile(base.outcome_map(base.means), 0.5)  # both branches occur
    res = []
    for devices in (("cpu",), ()):
        monkeypatch.setattr(gm, "_BRANCH_BY_INDEX_DEVICES", devices)
        mu = base.means.clone().requires_grad_(True)
        post = GaussianMixtureRiemannPosterior(mu, base.stds, base.log_weights,
                                               base.latent_borders, base.outcome_map)  # fmt: skip
        val = post.log_expected_improvement(best_f)
        res.append((val.detach(), torch.autograd.grad(val.sum(), mu)[0]))
    torch.testing.assert_close(res[0], res[1], rtol=1e-12, atol=1e-12)
    assert torch.isfinite(res[1][1]).all()


def test_shape_errors_and_validation():
    mu = torch.zeros(3, 1, 2, dtype=DT)
    latent = torch.linspace(-5, 5, 11, dtype=DT)
    omap = _outcome_map(False)
    with pytest.raises(ValueError, match="batch_shape x q x J"):
        GaussianMixtureRiemannPosterior(mu, torch.ones(3, 2, dtype=DT), mu, latent, omap)
    bad = GaussianMixtureRiemannPosterior(mu, mu + 1, mu, latent.flip(0), omap)
    with pytest.raises(ValueError, match="increasing"):
        bad.borders  # checked when first needed
    with pytest.raises(ValueError, match="scale \\* sign"):
        IncreasingOutcomeMap(lambda t: t, lambda y: y, scale=-1.0)
    post = GaussianMixtureRiemannPosterior(mu, mu + 1, mu - math.log(2), latent, omap)
    assert post.batch_shape == (3,) and post.base_sample_shape == (3, 1, 1)
    assert post.rsample(torch.Size([4])).shape == (4, 3, 1, 1)


@pytest.mark.parametrize("warped", [False, True])
def test_draws_are_exact_mixture_draws(warped):
    # independent points: each draw's marginal is the mixture's (not its buckets'),
    # the components are picked by weight, the same base samples give the same draws
    post = _posterior(warped, n=5)
    base = torch.randn(20000, *post.base_sample_shape, generator=torch.Generator().manual_seed(0), dtype=DT)
    y = post.rsample_from_base_samples(torch.Size([20000]), base)  # `S x 5 x 1 x 1`
    assert y.shape == (20000, 5, 1, 1)
    torch.testing.assert_close(y, post.rsample_from_base_samples(torch.Size([20000]), base))
    sd = post.variance.sqrt().squeeze(-1)
    torch.testing.assert_close(y.mean(0).squeeze(-1), post.mean.squeeze(-1), rtol=0.0, atol=float(0.05 * sd.max()))
    torch.testing.assert_close(y.std(0).squeeze(-1), sd, rtol=0.05, atol=0.0)
    # the cdf at the median of the draws is 1/2 (bucket view's cdf, fine buckets)
    med = y.median(0).values.squeeze(-1)  # `5 x 1`
    u = (y.squeeze(-1) <= med).to(DT).mean(0)
    torch.testing.assert_close(u, torch.full_like(u, 0.5), rtol=0.0, atol=0.01)


def test_joint_draws_follow_the_components_covariances():
    g = torch.Generator().manual_seed(3)
    J, q = 2, 3
    A = torch.randn(J, q, q, generator=g, dtype=DT)
    cov = A @ A.transpose(-1, -2) + 0.1 * torch.eye(q, dtype=DT)
    cov[:, 1, :] = cov[:, 0, :]  # point 1 copies point 0
    cov[:, :, 1] = cov[:, :, 0]
    mu = torch.randn(q, J, generator=g, dtype=DT)
    mu[1] = mu[0]
    sd = cov.diagonal(dim1=-2, dim2=-1).transpose(0, 1).sqrt()  # `q x J`
    log_w = torch.tensor([0.3, 0.7], dtype=DT).log().view(1, J)
    latent = torch.linspace(-30, 30, 2001, dtype=DT)
    post = GaussianMixtureRiemannPosterior(mu, sd, log_w, latent, _outcome_map(False), covariances=cov)
    y = post.rsample(torch.Size([40000])).squeeze(-1)  # `S x q`
    torch.testing.assert_close(y[:, 0], y[:, 1], rtol=0.0, atol=1e-3)  # the copy is joint (up to jitter)
    t = (y - (-3.0)) / 2.5  # latent draws
    w = log_w.exp().view(J, 1, 1)
    m = (w.squeeze(-1) * mu.T).sum(0)
    C = (w * (cov + mu.T.unsqueeze(-1) * mu.T.unsqueeze(-2))).sum(0) - m.unsqueeze(-1) * m.unsqueeze(-2)
    torch.testing.assert_close(t.T.cov(), C, rtol=0.05, atol=0.05)
    R = post.correlation_matrix
    torch.testing.assert_close(R, C / (C.diagonal().sqrt().unsqueeze(-1) * C.diagonal().sqrt()))
    # an affine map keeps the coupling (mirrored: the same covariances)
    neg = post.affine(-1.0)
    torch.testing.assert_close(neg.rsample_from_base_samples(torch.Size([8]), torch.zeros(8, q, 1, dtype=DT)),
                               -post.rsample_from_base_samples(torch.Size([8]), torch.zeros(8, q, 1, dtype=DT)))
    with pytest.raises(ValueError, match="batch_shape x J x q x q"):
        GaussianMixtureRiemannPosterior(mu, sd, log_w, latent, _outcome_map(False), covariances=cov[0])
