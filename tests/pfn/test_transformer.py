#!/usr/bin/env python3
r"""The network: cached context equals the reference path, any batch shape."""

import itertools

import pytest
import torch
from botorch_community.pfn import KVCache, PFNTransformer
from botorch_community.pfn.testing import random_pfn

ATOL = 1e-5


VARIANTS = {
    "plain": {},
    "metric": {"metric_attention": True},
    "gp": {"gp_head": True},
    "metric+gp": {"metric_attention": True, "gp_head": True, "gp_particles": 3},
}


@pytest.fixture(params=list(VARIANTS))
def net(request):
    return random_pfn(
        num_features=5, emsize=32, nlayers=3, nhead=4, nhid=48, **VARIANTS[request.param]
    )


def _data(n=9, d=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g), torch.randn(n, 1, generator=g)


@pytest.mark.parametrize("test_shape", [(4, 3), (6, 4, 3), (6, 1, 3), (2, 5, 4, 3)])
def test_cached_equals_reference_values_and_grads(net, test_shape):
    tX, tY = _data()
    X = torch.rand(*test_shape, requires_grad=True)
    X_b = X.reshape(-1, *test_shape[-2:])
    b = X_b.shape[0]
    ref = net(tX.expand(b, -1, -1), tY.expand(b, -1, -1), X_b).reshape(
        *test_shape[:-1], -1
    )
    cache = net.encode_context(tX, tY)
    out = net.predict(X, cache)
    assert out.shape == (*test_shape[:-1], net.num_buckets)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    w = torch.randn_like(ref)  # a generic scalar function of the outputs
    (g_ref,) = torch.autograd.grad((ref * w).sum(), X)
    (g_out,) = torch.autograd.grad((out * w).sum(), X)
    assert g_ref.abs().max() > 0
    # float32 round-off relative to the gradients' scale (the metric term's can be large)
    tol = ATOL * max(1.0, float(g_ref.abs().max()))
    torch.testing.assert_close(g_out, g_ref, atol=tol, rtol=0)


@pytest.mark.parametrize("test_shape", [(4, 3), (6, 4, 3), (2, 5, 4, 3)])
def test_cached_equals_reference_float64(net, test_shape):
    net = net.double()
    tX, tY = (t.double() for t in _data())
    X = torch.rand(*test_shape, dtype=torch.float64, requires_grad=True)
    X_b = X.reshape(-1, *test_shape[-2:])
    b = X_b.shape[0]
    ref = net(tX.expand(b, -1, -1), tY.expand(b, -1, -1), X_b).reshape(*test_shape[:-1], -1)
    out = net.predict(X, net.encode_context(tX, tY))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    w = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), X)
    (g_out,) = torch.autograd.grad((out * w).sum(), X)
    torch.testing.assert_close(g_out, g_ref, atol=1e-11, rtol=1e-12)


def test_batched_context_broadcasts(net):
    g = torch.Generator().manual_seed(3)
    tX, tY = torch.rand(3, 7, 2, generator=g), torch.randn(3, 7, 1, generator=g)
    X = torch.rand(3, 5, 2, generator=g)
    ref = net(tX, tY, X)
    cache = net.encode_context(tX, tY)
    torch.testing.assert_close(net.predict(X, cache), ref, atol=ATOL, rtol=0)
    # An extra leading batch dim (e.g. MC samples) broadcasts over the cache.
    X4 = X.unsqueeze(0).expand(4, 3, 5, 2)
    out4 = net.predict(X4, cache)
    assert out4.shape == (4, 3, 5, net.num_buckets)
    for i in range(4):
        torch.testing.assert_close(out4[i], ref, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="does not broadcast"):
        net.predict(torch.rand(2, 5, 2), cache)


def test_prediction_independent_of_batch_composition(net):
    tX, tY = _data()
    cache = net.encode_context(tX, tY)
    X = torch.rand(10, 3)
    alone = net.predict(X[:1], cache)
    together = net.predict(X, cache)[:1]
    torch.testing.assert_close(alone, together, atol=ATOL, rtol=0)


def test_context_not_copied_per_candidate(net):
    tX, tY = _data(n=50)
    cache = net.encode_context(tX, tY)
    assert cache.batch_shape == torch.Size([])
    assert cache.keys[0].shape == (4, 51, 8)  # nhead x (n + 1) x head_dim
    before = cache.nbytes()
    net.predict(torch.rand(512, 1, 3), cache)
    assert cache.nbytes() == before


def test_missing_targets_and_empty_context(net):
    tX, tY = _data()
    tY_nan = tY.clone()
    tY_nan[-2:] = float("nan")
    X = torch.rand(4, 3)
    ref = net(tX[None], tY_nan[None], X[None])[0]
    out = net.predict(X, net.encode_context(tX, tY_nan))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    # a missing target is not the same as the observed one
    assert (out - net.predict(X, net.encode_context(tX, tY))).abs().max() > 1e-4
    # n = 0: the prior predictive
    empty = net.encode_context(torch.rand(0, 3), torch.rand(0, 1))
    out0 = net.predict(X, empty)
    assert torch.isfinite(out0).all()
    torch.testing.assert_close(
        out0, net(torch.rand(1, 0, 3), torch.rand(1, 0, 1), X[None])[0], atol=ATOL, rtol=0
    )


def test_too_many_features_is_a_clear_error(net):
    with pytest.raises(ValueError, match="num_features=5"):
        net.encode_context(torch.rand(4, 6), torch.rand(4, 1))


def test_no_state_on_modules(net):
    keys_before = set(net.state_dict())
    a = net.encode_context(*_data(seed=1))
    b = net.encode_context(*_data(seed=2))
    assert set(net.state_dict()) == keys_before
    X = torch.rand(3, 3)
    # interleaved use of two caches on one network
    pa, pb = net.predict(X, a), net.predict(X, b)
    torch.testing.assert_close(net.predict(X, a), pa)
    assert (pa - pb).abs().max() > 1e-4


def test_extend_context_matches_full_encoding(net):
    tX, tY = _data(n=6)
    extra_X = torch.rand(2, 3, 1, 3)
    extra_Y = torch.randn(2, 3, 1, 1)
    base = net.encode_context(tX, tY)
    for base_cache in (None, base):
        ext = net.extend_context(tX, tY, extra_X, extra_Y, base_cache=base_cache)
        assert ext.batch_shape == (2, 3)
        X = torch.rand(2, 3, 4, 3)
        out = net.predict(X, ext)
        for i, j in itertools.product(range(2), range(3)):
            full = net.encode_context(
                torch.cat([tX, extra_X[i, j]]), torch.cat([tY, extra_Y[i, j]])
            )
            torch.testing.assert_close(
                out[i, j], net.predict(X[i, j], full), atol=ATOL, rtol=0
            )


def test_float64_inputs(net):
    tX, tY = _data()
    X = torch.rand(3, 2, 3, dtype=torch.float64, requires_grad=True)
    cache = net.encode_context(tX.double(), tY.double())
    out = net.predict(X, cache)
    out.sum().backward()
    assert X.grad is not None and X.grad.dtype == torch.float64
    assert net.x_encoder.weight.dtype == torch.float32


def test_constructor_validation():
    with pytest.raises(ValueError, match="divisible"):
        PFNTransformer(num_features=3, emsize=30, nhead=4, nlayers=1, nhid=8, num_buckets=4)
    with pytest.raises(ValueError, match="increasing"):
        PFNTransformer(
            num_features=3, emsize=8, nhead=2, nlayers=1, nhid=8, num_buckets=2,
            borders=torch.tensor([0.0, 0.0, 1.0]),
        )
    with pytest.raises(ValueError, match="target_readout.*removed"):
        PFNTransformer(num_features=3, emsize=8, nhead=2, nlayers=1, target_readout=True)
    assert isinstance(random_pfn().encode_context(*_data(d=2)), KVCache)
