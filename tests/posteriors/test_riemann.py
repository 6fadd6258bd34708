#!/usr/bin/env python3
r"""Tests for ``botorch_community.posteriors.riemann``."""

from __future__ import annotations

import math

import torch
from botorch.sampling.get_sampler import get_sampler
from botorch.sampling.normal import SobolQMCNormalSampler
from botorch.utils.testing import BotorchTestCase
from botorch_community.posteriors.riemann import (
    BoundedRiemannPosterior,
    MultivariateRiemannPosterior,
)

DT = torch.float64
# Unequal widths and a zero-probability bucket: [0,1) .2, [1,2) 0, [2,3) .5, [3,5) .3
BORDERS = torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0], dtype=DT)
PROBS = torch.tensor([0.2, 0.0, 0.5, 0.3], dtype=DT)


def _posterior(probs: torch.Tensor = PROBS, borders: torch.Tensor = BORDERS):
    return BoundedRiemannPosterior(borders, probs)


def _density(y: torch.Tensor, borders: torch.Tensor, probs: torch.Tensor):
    r"""Reference density for a single marginal (independent of the module)."""
    out = torch.zeros_like(y)
    for i in range(len(probs)):
        lo, hi = borders[i], borders[i + 1]
        inside = (y >= lo) & (y < hi)
        out = torch.where(inside, probs[i] / (hi - lo), out)
    return out


class TestBoundedRiemannPosterior(BotorchTestCase):
    def test_hand_computed_moments(self):
        post = _posterior(PROBS.view(1, 4))
        # mean = .2*.5 + .5*2.5 + .3*4
        self.assertAllClose(post.mean, torch.tensor([[2.55]], dtype=DT))
        # E[Y^2] = .2*(1/3) + .5*(4+6+9)/3 + .3*(9+15+25)/3
        second = 0.2 / 3 + 0.5 * 19 / 3 + 0.3 * 49 / 3
        self.assertAllClose(post.variance, torch.tensor([[second - 2.55**2]], dtype=DT))
        # a single bucket is a uniform: variance w^2/12
        single = BoundedRiemannPosterior(
            torch.tensor([2.0, 5.0], dtype=DT), torch.ones(3, 1, dtype=DT)
        )
        self.assertAllClose(single.mean, torch.full((3, 1), 3.5, dtype=DT))
        self.assertAllClose(single.variance, torch.full((3, 1), 9 / 12, dtype=DT))

    def test_moments_against_monte_carlo(self):
        torch.manual_seed(0)
        probs = torch.softmax(torch.randn(2, 3, 4, dtype=DT), dim=-1)
        post = _posterior(probs)
        samples = post.rsample(torch.Size([100_000]))
        self.assertEqual(samples.shape, torch.Size([100_000, 2, 3, 1]))
        se = (post.variance / 100_000).sqrt()
        self.assertTrue(((samples.mean(0) - post.mean).abs() < 5 * se).all())
        # variance of the sample variance ~ (m4 - s^4) / n; use a loose 3% bound
        self.assertAllClose(samples.var(0), post.variance, rtol=0.03, atol=0)

    def test_variance_is_stable_far_from_zero(self):
        shifted = _posterior(PROBS, BORDERS + 1e8)
        self.assertAllClose(shifted.variance, _posterior().variance, rtol=1e-9)
        self.assertAllClose(shifted.mean - 1e8, _posterior().mean, rtol=1e-9)

    def test_cdf_icdf_log_prob(self):
        post = _posterior()
        y = torch.linspace(-1.0, 6.0, 701, dtype=DT)
        cdf = post.cdf(y)  # 1-dim probabilities: every dim of y is a sample dim
        self.assertEqual(cdf.shape, torch.Size([701]))
        self.assertTrue((cdf[1:] >= cdf[:-1]).all())
        self.assertAllClose(cdf[0], torch.tensor(0.0, dtype=DT))
        self.assertAllClose(cdf[-1], torch.tensor(1.0, dtype=DT))
        hand = {0.5: 0.1, 1.5: 0.2, 2.25: 0.325, 4.0: 0.85}
        for value, expected in hand.items():
            self.assertAllClose(post.cdf(value), torch.tensor(expected, dtype=DT))
        # icdf(cdf(y)) = y inside the buckets of positive probability
        y_in = torch.tensor([0.01, 0.5, 0.99, 2.001, 2.7, 3.0, 4.4, 4.99], dtype=DT)
        back = post.icdf(post.cdf(y_in)).squeeze(-1)
        self.assertAllClose(back, y_in, atol=1e-12, rtol=0)
        # the flat part of the cdf (zero bucket [1, 2]) maps to its left edge ...
        self.assertAllClose(
            post.icdf(post.cdf(2.0)).squeeze(), torch.tensor(1.0, dtype=DT)
        )
        self.assertAllClose(post.icdf(0.2).squeeze(), torch.tensor(1.0, dtype=DT))
        # ... and levels just above it jump over the empty bucket
        self.assertGreaterEqual(post.icdf(0.2 + 1e-12).item(), 2.0)
        u = torch.rand(1000, dtype=DT)
        self.assertAllClose(post.cdf(post.icdf(u).squeeze(-1)), u)
        # log_prob: hand values, -inf outside the support / in the zero bucket
        lp = post.log_prob(torch.tensor([0.5, 2.5, 4.0, 1.5, -0.1, 5.1]))
        expected = [math.log(0.2), math.log(0.5), math.log(0.3 / 2)]
        self.assertAllClose(lp[:3], torch.tensor(expected, dtype=DT))
        self.assertTrue(torch.isneginf(lp[3:]).all())
        # the density integrates to one (midpoint rule, exact per bucket)
        n = 20_000
        grid = torch.linspace(-1.0, 6.0, n + 1, dtype=DT)
        mids = (grid[1:] + grid[:-1]) / 2
        integral = post.log_prob(mids).exp().sum() * (7.0 / n)
        self.assertAllClose(integral, torch.tensor(1.0, dtype=DT), atol=1e-3)
        self.assertAllClose(post.density(mids), _density(mids, BORDERS, PROBS))

    def test_icdf_shapes_quantile_and_confidence_region(self):
        probs = torch.full((2, 3, 4), 0.25, dtype=DT)  # uniform on [0, 1]
        post = _posterior(probs, torch.linspace(0, 1, 5, dtype=DT))
        self.assertEqual(post.icdf(0.3).shape, torch.Size([2, 3, 1]))
        self.assertAllClose(post.quantile(0.3), torch.full((2, 3, 1), 0.3, dtype=DT))
        levels = torch.tensor([0.1, 0.6], dtype=DT)
        quantiles = post.quantile(levels)
        self.assertEqual(quantiles.shape, torch.Size([2, 2, 3, 1]))
        self.assertAllClose(quantiles[1], torch.full((2, 3, 1), 0.6, dtype=DT))
        lower, upper = post.confidence_region(0.9)
        self.assertAllClose(lower, torch.full((2, 3), 0.05, dtype=DT))
        self.assertAllClose(upper, torch.full((2, 3), 0.95, dtype=DT))
        u = torch.rand(7, 2, 3, dtype=DT)
        self.assertAllClose(post.icdf(u), u.unsqueeze(-1))
        with self.assertRaisesRegex(ValueError, r"\[0, 1\]"):
            post.icdf(1.5)

    def test_integrate(self):
        post = _posterior(torch.softmax(torch.randn(3, 2, 4, dtype=DT), -1))
        ones = post.integrate(lambda lo, hi: hi - lo)
        self.assertAllClose(ones, torch.ones(3, 2, dtype=DT))
        mean = post.integrate(lambda lo, hi: (hi**2 - lo**2) / 2)
        self.assertAllClose(mean, post.mean.squeeze(-1))

    def test_rsample_gradients(self):
        torch.manual_seed(1)
        z = torch.randn(6, 2, 1, 1, dtype=DT)

        def sample_from_probs(probs):
            post = _posterior(probs)
            return post.rsample_from_base_samples(torch.Size([6]), z)

        logits = torch.randn(2, 1, 4, dtype=DT)
        probs = logits.softmax(-1).requires_grad_(True)
        self.assertTrue(torch.autograd.gradcheck(sample_from_probs, (probs,)))
        # through a softmax, as a PFN produces them
        logits.requires_grad_(True)
        self.assertTrue(
            torch.autograd.gradcheck(
                lambda lg: sample_from_probs(lg.softmax(-1)), (logits,)
            )
        )
        # closed form: y = l_i + w_i (u - C_{i-1}) / p_i, for u in bucket 2
        probs = PROBS.clone().requires_grad_(True)
        u = torch.tensor(0.45, dtype=DT)
        y = _posterior(probs).icdf(u).squeeze()
        self.assertAllClose(y, torch.tensor(2.5, dtype=DT))
        y.backward()
        # dy/dp_j = -w/p_2 for j < 2, -w (u - C_1) / p_2^2 for j = 2, 0 above
        expected = torch.tensor([-2.0, -2.0, -1.0, 0.0], dtype=DT)
        self.assertAllClose(probs.grad, expected)

    def test_gradients_finite_at_edges_and_zero_buckets(self):
        probs = torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3], dtype=DT, requires_grad=True)
        borders = torch.tensor([-1.0, 0.0, 1.0, 2.0, 3.0, 5.0], dtype=DT)
        post = BoundedRiemannPosterior(borders, probs)
        levels = torch.tensor([0.0, 0.2, 0.7, 1.0, 0.1], dtype=DT)
        out = post.icdf(levels).squeeze(-1)
        self.assertAllClose(out, torch.tensor([-1.0, 1.0, 3.0, 5.0, 0.5], dtype=DT))
        out.sum().backward()
        self.assertTrue(torch.isfinite(probs.grad).all())
        probs.grad = None
        lp = post.log_prob(torch.tensor([-0.5, 1.5, 0.5, 0.0, 5.0]))
        self.assertTrue(torch.isneginf(lp[:2]).all())
        lp[2:].sum().backward()
        self.assertTrue(torch.isfinite(probs.grad).all())
        samples = post.rsample(torch.Size([2000]))
        in_zero_bucket = ((samples > -1) & (samples < 0)) | (
            (samples > 1) & (samples < 2)
        )
        self.assertFalse(in_zero_bucket.any())

    def test_sampler_registration_and_shapes(self):
        probs = torch.softmax(torch.randn(3, 2, 4, dtype=DT), -1)
        post = _posterior(probs, BORDERS.float())  # borders follow probs' dtype
        self.assertEqual(post.dtype, DT)
        self.assertEqual(post.borders.dtype, DT)
        self.assertEqual(post.device, probs.device)
        self.assertEqual(post.base_sample_shape, torch.Size([3, 2, 1]))
        self.assertEqual(post.batch_range, (0, -2))
        self.assertEqual(post.batch_shape, torch.Size([3]))
        sampler = get_sampler(post, torch.Size([16]), seed=0)
        self.assertIsInstance(sampler, SobolQMCNormalSampler)
        samples = sampler(post)
        self.assertEqual(samples.shape, torch.Size([16, 3, 2, 1]))
        self.assertEqual(samples.dtype, DT)
        # the same base samples are shared across the t-batch
        same = _posterior(probs[:1].expand(3, 2, 4))
        s2 = sampler(same)
        self.assertAllClose(s2[:, 0], s2[:, 2])
        # upstream's base-sample layout (no trailing output dim) is accepted too
        z = torch.randn(5, 3, 2, dtype=DT)
        self.assertAllClose(
            post.rsample_from_base_samples(torch.Size([5]), z),
            post.rsample_from_base_samples(torch.Size([5]), z.unsqueeze(-1)),
        )
        with self.assertRaisesRegex(ValueError, "sample_shape"):
            post.rsample_from_base_samples(torch.Size([4]), z)

    def test_float32(self):
        probs = torch.softmax(torch.randn(2, 1, 4), -1)
        post = _posterior(probs, BORDERS)
        self.assertEqual(post.mean.dtype, torch.float32)
        self.assertEqual(post.rsample(torch.Size([3])).dtype, torch.float32)

    def test_input_validation(self):
        with self.assertRaisesRegex(ValueError, "buckets"):
            BoundedRiemannPosterior(BORDERS, torch.full((3,), 1 / 3, dtype=DT))
        with self.assertRaisesRegex(ValueError, "strictly increasing"):
            BoundedRiemannPosterior(torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0]), PROBS)
        with self.assertRaisesRegex(ValueError, "non-negative"):
            BoundedRiemannPosterior(BORDERS, torch.tensor([0.6, -0.1, 0.2, 0.3]))
        with self.assertRaisesRegex(ValueError, "sum to one"):
            BoundedRiemannPosterior(BORDERS, torch.full((4,), 0.3))
        with self.assertRaisesRegex(ValueError, "1-dim"):
            BoundedRiemannPosterior(BORDERS.view(1, -1), PROBS)
        with self.assertRaisesRegex(TypeError, "floating point"):
            BoundedRiemannPosterior(BORDERS, torch.tensor([1, 0, 0, 0]))


class TestMultivariateRiemannPosterior(BotorchTestCase):
    def test_copula_correlation_and_marginals(self):
        torch.manual_seed(0)
        probs = torch.softmax(torch.randn(3, 4, dtype=DT), -1)  # q = 3, B = 4
        corr = torch.tensor(
            [[1.0, 0.8, -0.4], [0.8, 1.0, -0.2], [-0.4, -0.2, 1.0]], dtype=DT
        )
        post = MultivariateRiemannPosterior(BORDERS, probs, corr)
        n = 40_000
        samples = post.rsample(torch.Size([n])).squeeze(-1)  # n x 3
        # normal scores Phi^{-1}(F(Y)) recover the latent Gaussian correlation
        scores = torch.special.ndtri(post.cdf(samples).clamp(1e-9, 1 - 1e-9))
        empirical = torch.corrcoef(scores.T)
        # standard error of a correlation ~ (1 - r^2) / sqrt(n) <= 0.005
        self.assertAllClose(empirical, corr, atol=0.03, rtol=0)
        # the marginals are those of the independent posterior: bucket frequencies
        bucket = torch.searchsorted(BORDERS, samples.contiguous(), right=True) - 1
        freq = torch.stack([(bucket == i).to(DT).mean(0) for i in range(4)], -1)
        self.assertAllClose(freq, probs, atol=0.015, rtol=0)
        # and the base-sample path gives gradients w.r.t. probs and correlation
        probs = probs.clone().requires_grad_(True)
        corr = corr.clone().requires_grad_(True)
        z = torch.randn(8, 3, 1, dtype=DT)
        out = MultivariateRiemannPosterior(BORDERS, probs, corr)
        out.rsample_from_base_samples(torch.Size([8]), z).sum().backward()
        self.assertTrue(torch.isfinite(probs.grad).all())
        self.assertTrue(torch.isfinite(corr.grad).all())
        self.assertGreater(corr.grad.abs().sum().item(), 0.0)

    def test_singular_correlation_and_validation(self):
        probs = torch.full((2, 2, 4), 0.25, dtype=DT)
        ones = torch.ones(2, 2, 2, dtype=DT)  # perfectly correlated: only PSD
        post = MultivariateRiemannPosterior(BORDERS, probs, ones)
        # rows of the (jittered) Cholesky factor are renormalized: exact marginals
        norms = post.scale_tril.norm(dim=-1)
        self.assertAllClose(norms, torch.ones_like(norms), atol=1e-14, rtol=0)
        samples = post.rsample(torch.Size([500])).squeeze(-1)
        self.assertTrue(torch.isfinite(samples).all())
        self.assertAllClose(samples[..., 0], samples[..., 1], atol=5e-3, rtol=0)
        sampler = get_sampler(post, torch.Size([4]))
        self.assertEqual(sampler(post).shape, torch.Size([4, 2, 2, 1]))
        with self.assertRaisesRegex(ValueError, "batch_shape x q x q"):
            MultivariateRiemannPosterior(BORDERS, probs, torch.eye(3, dtype=DT))
        with self.assertRaisesRegex(ValueError, "unit diagonal"):
            MultivariateRiemannPosterior(BORDERS, probs, 2 * ones)


class TestAffine(BotorchTestCase):
    r"""``BoundedRiemannPosterior.affine``: the exact posterior of ``a * Y + b``."""

    def _probs(self, *shape):
        g = torch.Generator().manual_seed(3)
        return torch.softmax(torch.randn(*shape, 4, generator=g, dtype=DT), dim=-1)

    def test_moments_cdf_and_quantiles(self):
        post = _posterior(self._probs(2, 3))
        levels = torch.tensor([0.1, 0.5, 0.9], dtype=DT)
        for scale, shift in [(2.5, -1.0), (-2.5, 3.0), (-1.0, 0.0), (0.5, 0.0)]:
            out = post.affine(scale, shift)
            self.assertIs(type(out), BoundedRiemannPosterior)
            self.assertTrue((out.borders[1:] > out.borders[:-1]).all())
            self.assertAllClose(out.mean, scale * post.mean + shift)
            self.assertAllClose(out.variance, scale**2 * post.variance)
            # P(aY + b <= a y + b) = F(y) for a > 0, 1 - F(y) for a < 0
            y = torch.tensor(2.2, dtype=DT)
            expected = post.cdf(y) if scale > 0 else 1 - post.cdf(y)
            self.assertAllClose(out.cdf(scale * y + shift), expected)
            # quantiles map (levels reflected for a negative scale)
            flipped = levels if scale > 0 else 1 - levels
            self.assertAllClose(
                out.quantile(levels), scale * post.quantile(flipped) + shift
            )
            # the density is carried over (divided by |a|)
            self.assertAllClose(
                out.log_prob(scale * y + shift), post.log_prob(y) - math.log(abs(scale))
            )

    def test_negative_scale_reverses_buckets(self):
        post = _posterior(PROBS.view(1, 4))
        out = post.affine(-1.0, 0.0)
        self.assertAllClose(out.borders, -BORDERS.flip(0))
        self.assertAllClose(out.probabilities, PROBS.flip(0).view(1, 4))
        # twice: back to the original
        back = out.affine(-1.0)
        self.assertAllClose(back.borders, post.borders)
        self.assertAllClose(back.probabilities, post.probabilities)

    def test_identity_tensor_scale_and_validation(self):
        post = _posterior(self._probs(3))
        self.assertIs(post.affine(1.0, 0.0), post)  # nothing to map
        w = torch.tensor([-2.0], dtype=torch.float32)  # a one-element tensor
        out = post.affine(w, 1.0)
        self.assertEqual(out.borders.dtype, DT)
        self.assertAllClose(out.mean, -2.0 * post.mean + 1.0)
        with self.assertRaisesRegex(ValueError, "zero"):
            post.affine(0.0)
        with self.assertRaisesRegex(ValueError, "scalar"):
            post.affine(torch.ones(2, dtype=DT))

    def test_gradients_flow_through_the_map(self):
        probs = self._probs(2).requires_grad_(True)
        scale = torch.tensor(-3.0, dtype=DT, requires_grad=True)
        out = _posterior(probs).affine(scale, 0.5)
        out.mean.sum().backward()
        mid = (BORDERS[1:] + BORDERS[:-1]) / 2
        self.assertAllClose(scale.grad, (probs.detach() * mid).sum())
        self.assertAllClose(probs.grad, (scale.detach() * mid + 0.5).expand(2, 4))

    def test_multivariate_keeps_correlation(self):
        probs = self._probs(2, 3)
        corr = torch.tensor(
            [[1.0, 0.6, -0.2], [0.6, 1.0, 0.3], [-0.2, 0.3, 1.0]], dtype=DT
        ).expand(2, 3, 3)
        post = MultivariateRiemannPosterior(BORDERS, probs, corr)
        for scale in (2.0, -0.5):
            out = post.affine(scale, 1.0)
            self.assertIs(type(out), MultivariateRiemannPosterior)
            self.assertIs(out.correlation_matrix, post.correlation_matrix)
            self.assertAllClose(out.mean, scale * post.mean + 1.0)
            self.assertAllClose(out.variance, scale**2 * post.variance)
            # joint samples from the same base samples are the affine map of the
            # original's: the copula (and so the correlation) is unchanged
            g = torch.Generator().manual_seed(0)
            z = torch.randn(16, 2, 3, 1, dtype=DT, generator=g)
            zz = z if scale > 0 else -z  # reflected scores for a decreasing map
            mapped = out.rsample_from_base_samples(torch.Size([16]), zz)
            direct = post.rsample_from_base_samples(torch.Size([16]), z)
            self.assertAllClose(mapped, scale * direct + 1.0)
