#!/usr/bin/env python3
r"""context_moments: the one standardisation, relative to the targets' magnitude."""

import pytest
import torch
from botorch_community.models.prior_fitted_network import PFNModel
from botorch_community.pfn.standardize import context_moments
from botorch_community.pfn.testing import random_pfn


@pytest.mark.parametrize("scale", [1e-3, 1e-9, 1e-15])
def test_tiny_spreads_are_standardised_not_treated_as_constant(scale):
    g = torch.Generator().manual_seed(0)
    X = torch.rand(12, 2, generator=g, dtype=torch.float64)
    Y = torch.sin(6 * X.sum(-1, keepdim=True))
    mean, std = context_moments(Y * scale)
    torch.testing.assert_close(std, Y.std() * scale * torch.ones(1, 1, dtype=torch.float64))
    net = random_pfn(num_features=4)
    Xq = torch.rand(5, 2, generator=g, dtype=torch.float64)
    base, small = PFNModel(X, Y, model=net).posterior(Xq), PFNModel(X, Y * scale, model=net).posterior(Xq)
    torch.testing.assert_close(small.mean / scale, base.mean)  # equivariant in the scale
    torch.testing.assert_close(small.variance.sqrt() / scale, base.variance.sqrt())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_targets_up_to_round_off(dtype):
    y = torch.full((8, 1), 1234.5, dtype=dtype)
    y[3] = y[3] + torch.finfo(dtype).eps * 1234.5  # one ulp apart: round-off, not signal
    mean, std = context_moments(y)
    assert float(std) == 1.0 and abs(float(mean) - 1234.5) < 1e-2
    mean, std = context_moments(torch.zeros(5, 1, dtype=dtype))
    assert float(std) == 1.0 and float(mean) == 0.0
    # one observed target, and pending (NaN) rows ignored
    y = torch.tensor([[2.0], [float("nan")]], dtype=dtype)
    mean, std = context_moments(y)
    assert float(mean) == 2.0 and float(std) == 1.0
