#!/usr/bin/env python3
r"""TargetMap: the monotone map from user targets to the network's standardised space."""

import pytest
import torch
from botorch_community.pfn.target_map import TargetMap


def _skewed(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64).exp() ** 2  # heavy upper tail
    return y


def test_gaussian_contexts_are_only_standardised():
    y = torch.randn(50, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tmap = TargetMap.fit(y * 3 + 7)
    assert not tmap.warped
    torch.testing.assert_close(tmap.forward(y * 3 + 7), (y * 3 + 7 - (y * 3 + 7).mean()) / (y * 3).std())
    assert not TargetMap.fit(_skewed(), warp=False).warped
    assert not TargetMap.fit(_skewed(n=4)).warped  # too few targets to fit a warp


def test_skewed_contexts_are_warped_and_the_incumbent_comes_in():
    y = _skewed()
    tmap = TargetMap.fit(y)
    assert tmap.warped
    t = tmap.forward(y)
    z = (y - y.mean()) / y.std()
    assert float(t.max()) < float(z.max()) - 1.0  # the extreme moves into the dense region
    torch.testing.assert_close(t.mean(), torch.zeros((), dtype=t.dtype), atol=1e-10, rtol=0)
    torch.testing.assert_close(t.std(), torch.ones((), dtype=t.dtype), atol=1e-10, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inverse_is_exact_monotone_and_finite_on_the_whole_line(seed):
    y = _skewed(seed=seed) - 3.0  # negative values too
    y[0] = float("nan")  # a pending target is ignored
    tmap = TargetMap.fit(y)
    obs = y[~torch.isnan(y)]
    torch.testing.assert_close(tmap.inverse(tmap.forward(obs)), obs, atol=1e-9, rtol=1e-9)
    t = torch.linspace(-40, 40, 4001, dtype=torch.float64)
    u = tmap.inverse(t)
    assert bool(torch.isfinite(u).all()) and bool((u[1:] > u[:-1]).all())
    # beyond the context the map is linear (its tangent at the extreme): no exploding tails
    hi = tmap.forward(obs.max())
    far = torch.tensor([hi + 10, hi + 20], dtype=torch.float64)
    step = tmap.inverse(far[1:]) - tmap.inverse(far[:1])
    near = (tmap.inverse(hi + 1e-6) - tmap.inverse(hi)).reshape(1)
    torch.testing.assert_close(step / 10, near / 1e-6, rtol=1e-4, atol=0)
    # the derivative maps noise variances (delta method)
    eps = 1e-6
    fd = (tmap.forward(obs + eps) - tmap.forward(obs - eps)) / (2 * eps)
    torch.testing.assert_close(tmap.derivative(obs), fd, rtol=1e-5, atol=1e-8)
    assert torch.isnan(tmap.variance_forward(obs[:1], torch.tensor([float("nan")], dtype=obs.dtype)))


def test_constant_targets():
    tmap = TargetMap.fit(torch.full((10, 1), 3.0, dtype=torch.float64))
    assert not tmap.warped
    torch.testing.assert_close(tmap.inverse(tmap.forward(torch.tensor([3.0], dtype=torch.float64))),
                               torch.tensor([3.0], dtype=torch.float64))  # fmt: skip
    near = torch.full((10, 1), 3.0, dtype=torch.float64)
    near[::3] += torch.finfo(torch.float64).eps * 3.0  # round-off, not signal
    assert not TargetMap.fit(near).warped

