#!/usr/bin/env python3
r"""Bucket borders from prior samples and the bar-distribution NLL."""

import math

import pytest
import torch
from botorch_community.pfn.bar_distribution import bar_nll, borders_from_samples, bucket_index


def test_borders_equal_mass_and_outer_margin():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(20_000, generator=g) * 2 + 1
    b = borders_from_samples(y, 40)
    assert b.shape == (41,) and b.dtype == torch.float32
    assert bool((b[1:] > b[:-1]).all())
    assert float(b[0]) < float(y.min()) and float(b[-1]) > float(y.max())
    counts = torch.bincount(bucket_index(y, b), minlength=40).double()
    torch.testing.assert_close(counts / y.numel(), torch.full((40,), 1 / 40, dtype=torch.float64), atol=2e-3, rtol=0)
    # widened only "a little": less than the adjacent bucket width
    assert float(y.min() - b[0]) < float(b[1] - b[0])


def test_borders_ties_nonfinite_and_errors():
    y = torch.cat([torch.zeros(500), torch.ones(500), torch.tensor([float("nan"), float("inf")])])
    b = borders_from_samples(y, 10)
    assert bool((b[1:] > b[:-1]).all())
    with pytest.raises(ValueError):
        borders_from_samples(torch.randn(5), 10)


def test_nll_matches_definition_and_clamps():
    borders = torch.tensor([-2.0, -1.0, 0.0, 0.5, 3.0])
    widths = borders[1:] - borders[:-1]
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.1]]).expand(6, -1)
    y = torch.tensor([-1.5, -0.2, 0.0, 2.9, -50.0, 80.0])
    p = torch.softmax(logits[0], -1)
    expected_idx = [0, 1, 2, 3, 0, 3]
    expected = torch.stack([-torch.log(p[i] / widths[i]) for i in expected_idx])
    torch.testing.assert_close(bar_nll(logits, y, borders), expected)
    torch.testing.assert_close(bar_nll(logits, y.unsqueeze(-1), borders), expected)  # `... x 1`
    # uniform logits over equal widths: a uniform density
    b = torch.linspace(-1, 1, 11)
    nll = bar_nll(torch.zeros(3, 10), torch.tensor([-0.95, 0.0, 0.95]), b)
    torch.testing.assert_close(nll, torch.full((3,), math.log(2.0)))
    # NaN targets give NaN, gradients are finite elsewhere
    lg = torch.zeros(2, 10, requires_grad=True)
    out = bar_nll(lg, torch.tensor([0.1, float("nan")]), b)
    assert torch.isnan(out[1]) and torch.isfinite(out[0])
    out[0].backward()
    assert torch.isfinite(lg.grad).all()


def test_nll_bfloat16_logits_computed_in_float32():
    borders = torch.linspace(-3, 3, 101)
    logits = torch.randn(4, 7, 100)
    y = torch.randn(4, 7, 1)
    ref = bar_nll(logits, y, borders)
    out = bar_nll(logits.bfloat16(), y, borders)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0.1, rtol=0)


def test_gaussian_bucket_probabilities():
    from botorch_community.pfn.bar_distribution import log_gaussian_bucket_probs

    borders = torch.linspace(-4, 4, 81, dtype=torch.float64)
    mu = torch.tensor([0.0, 1.234, -3.9, 10.0], dtype=torch.float64)
    sigma = torch.tensor([1.0, 0.01, 0.3, 0.5], dtype=torch.float64)
    q = log_gaussian_bucket_probs(mu, sigma, borders).exp()
    normal = torch.distributions.Normal(mu.unsqueeze(-1), sigma.unsqueeze(-1))
    expect = normal.cdf(borders[1:]) - normal.cdf(borders[:-1])
    torch.testing.assert_close(q, expect.clamp_min(1e-30), atol=1e-12, rtol=1e-9)
    # a mean outside the borders: all buckets floored, finite, no NaN gradients
    mu32 = torch.tensor([50.0, 0.0], requires_grad=True)
    lq = log_gaussian_bucket_probs(mu32, torch.tensor([0.1, 1e-4]), borders.float())
    assert torch.isfinite(lq).all()
    lq.sum().backward()
    assert torch.isfinite(mu32.grad).all()


def test_gaussian_bucket_probabilities_in_both_far_tails():
    # Reference: the difference of upper (or lower) tails from erfc, exact far out where
    # a difference of CDFs cancels to 0 or to round-off.
    from botorch_community.pfn.bar_distribution import gaussian_bucket_probs

    borders = torch.tensor([-9.0, -8.0, -1.0, 0.5, 8.0, 9.0], dtype=torch.float64)
    q = gaussian_bucket_probs(torch.zeros(1, dtype=torch.float64),
                              torch.ones(1, dtype=torch.float64), borders)[0]  # fmt: skip
    tail = lambda a: 0.5 * math.erfc(a / math.sqrt(2))  # P(Z > a)
    expect = torch.tensor([tail(8) - tail(9), tail(1) - tail(8), 1 - tail(1) - tail(0.5),
                           tail(0.5) - tail(8), tail(8) - tail(9)], dtype=torch.float64)
    torch.testing.assert_close(q, expect, rtol=1e-12, atol=0)
    assert 6e-16 < float(q[0]) < 7e-16  # where 1 - CDF would give 0 or round-off
