#!/usr/bin/env python3
r"""The network: cached context equals the reference path, any batch shape."""

import itertools
import math

import pytest
import torch
from botorch_community.pfn import KVCache, PFNTransformer
from botorch_community.pfn.testing import random_pfn

ATOL = 1e-5


VARIANTS = {
    "plain": {},
    "metric": {"metric_attention": True},
    "gauss": {"gaussian_head": True},
    "metric+gauss": {"metric_attention": True, "gaussian_head": True},
    "readout": {"target_readout": True},
    "metric+readout": {"metric_attention": True, "target_readout": True},
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


def test_stale_weights_are_refused(net):
    tX, tY = _data()
    cache = net.encode_context(tX, tY)
    with torch.no_grad():
        net.layers[0].in_proj.weight.add_(0.01)
    with pytest.raises(RuntimeError, match="different network weights"):
        net.predict(torch.rand(2, 3), cache)


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
        PFNTransformer(3, emsize=30, nhead=4, nlayers=1, nhid=8, num_buckets=4)
    with pytest.raises(ValueError, match="increasing"):
        PFNTransformer(
            3, emsize=8, nhead=2, nlayers=1, nhid=8, num_buckets=2,
            borders=torch.tensor([0.0, 0.0, 1.0]),
        )
    assert isinstance(random_pfn().encode_context(*_data(d=2)), KVCache)


# ---------------------------------------------------------------- metric attention
def test_metric_attention_starts_as_the_plain_network():
    plain = random_pfn(num_features=5, emsize=32, nlayers=3, nhead=4, nhid=48)
    grown = PFNTransformer(**{**plain.config, "metric_attention": True}, borders=plain.borders)
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".metric_" in k for k in missing)
    grown.eval()
    tX, tY = _data()
    X = torch.rand(6, 3)
    torch.testing.assert_close(
        grown.predict(X, grown.encode_context(tX, tY)),
        plain.predict(X, plain.encode_context(tX, tY)),
        atol=1e-6, rtol=0,
    )  # fmt: skip
    # switching a gate on changes the predictions
    with torch.no_grad():
        grown.layers[0].metric_gate.fill_(1.0)
    diff = grown.predict(X, grown.encode_context(tX, tY)) - plain.predict(
        X, plain.encode_context(tX, tY)
    )
    assert diff.abs().max() > 1e-3


def test_metric_bias_formula():
    net = random_pfn(num_features=5, emsize=32, nlayers=1, nhead=4, nhid=48, metric_attention=True)
    layer = net.layers[0]
    g = torch.Generator().manual_seed(0)
    z, qX, cX = torch.randn(2, 3, 32, generator=g), torch.rand(2, 3, 4, generator=g), torch.rand(2, 6, 4, generator=g)
    bias = layer.metric_bias(z, net._sqdist(qX, cX))
    assert bias.shape == (2, 4, 3, 7)  # B x nhead x q x (n + 1)
    w = layer.metric_proj.weight.view(4, 5, 32)[:, :4]
    c = layer.metric_proj.bias.view(4, 5)[:, :4]
    for b, h, i in itertools.product(range(2), range(4), range(3)):
        s = (w[h] @ z[b, i] + c[h]).clamp(-12, 14).exp()  # `d`
        dist = ((qX[b, i] - cX[b]) ** 2 * s).sum(-1)  # `n`
        softmin = -0.01 * torch.logsumexp(-dist / 0.01, dim=-1)
        assert dist.min() - 0.01 * math.log(6) <= softmin <= dist.min() + 1e-6
        expect = layer.metric_gate[h] * (softmin - dist)
        torch.testing.assert_close(bias[b, h, i, 1:], expect, atol=1e-5, rtol=1e-5)
        assert bias[b, h, i, 0] == 0  # the context token


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_metric_expanded_form_equals_direct_form(dtype):
    # the training-speed option computes the same network: reference path, cached
    # path, gradients w.r.t. the weights (training) and the test inputs
    net = random_pfn(num_features=5, emsize=32, nlayers=3, nhead=4, nhid=48,
                     metric_attention=True).to(dtype)
    tX, tY = (t.to(dtype) for t in _data(n=12))
    X = torch.rand(2, 5, 3, dtype=dtype, generator=torch.Generator().manual_seed(3))
    X.requires_grad_(True)
    # float32: the direct form's own round-off (the expanded form runs in float64)
    tol = 5e-5 if dtype == torch.float32 else 1e-10

    def run(expanded):
        net.metric_expanded = expanded
        net.zero_grad()
        ref = net(tX.expand(2, -1, -1), tY.expand(2, -1, -1), X)
        cached = net.predict(X, net.encode_context(tX, tY))
        loss = (ref * torch.linspace(-1, 1, ref.shape[-1], dtype=dtype)).sum()
        (g_X,) = torch.autograd.grad(loss, X, retain_graph=True)
        loss.backward()
        g_w = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
        return ref, cached, g_X, g_w

    direct, expanded = run(False), run(True)
    net.metric_expanded = False
    for a, b in zip(direct, expanded):
        torch.testing.assert_close(b, a, atol=tol * max(1.0, float(a.detach().abs().max())), rtol=0)
    # sharp metrics (large scales) cancel digits in the expansion: float64 keeps them
    s = torch.full((1, 2, 4, 3), math.exp(14.0), dtype=dtype)
    qX, cX = torch.rand(1, 2, 3, dtype=dtype), torch.rand(1, 7, 3, dtype=dtype)
    cX[0, 0] = qX[0, 0]  # a repeated input: distance exactly 0
    from botorch_community.pfn.transformer import expanded_metric_dist

    dist = expanded_metric_dist(s, qX, cX)
    exact = torch.einsum("bqhd,bqkd->bhqk", s, (qX.unsqueeze(-2) - cX.unsqueeze(-3)) ** 2)
    torch.testing.assert_close(dist, exact, atol=1e-7 * math.exp(14.0), rtol=1e-6)


def test_metric_cache_holds_context_inputs():
    net = random_pfn(num_features=5, emsize=32, nlayers=2, nhead=4, nhid=48, metric_attention=True)
    tX, tY = _data()
    cache = net.encode_context(tX, tY)
    torch.testing.assert_close(cache.context_X, tX)
    kv = sum(t.numel() * 4 for t in (*cache.keys, *cache.values))
    assert cache.nbytes() == kv + tX.numel() * 4
    with pytest.raises(ValueError, match="d=2 features"):
        net.predict(torch.rand(4, 2), cache)


# ---------------------------------------------------------------- Gaussian head
def test_gaussian_head_starts_near_the_plain_network_and_can_be_sharp():
    plain = random_pfn(num_features=5, emsize=32, nlayers=3, nhead=4, nhid=48)
    grown = PFNTransformer(**{**plain.config, "gaussian_head": True}, borders=plain.borders)
    missing, _ = grown.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["gauss_head.bias", "gauss_head.weight"]
    grown.eval()
    tX, tY = _data()
    X = torch.rand(6, 3)
    p_plain = plain.predict(X, plain.encode_context(tX, tY)).softmax(-1)
    p_grown = grown.predict(X, grown.encode_context(tX, tY)).softmax(-1)
    # mixing weight sigmoid(-6) = 0.0025 at the start
    assert (p_grown - p_plain).abs().sum(-1).max() < 2 * torch.sigmoid(torch.tensor(-6.0))
    # a dominant, narrow Gaussian puts its mass in a few buckets around the bar mean
    with torch.no_grad():
        grown.gauss_head.bias.copy_(torch.tensor([0.0, -6.0, 8.0]))
    p = grown.predict(X, grown.encode_context(tX, tY)).softmax(-1)
    centers = (grown.borders[1:] + grown.borders[:-1]) / 2
    mean_plain = p_plain @ centers
    top = p.argmax(-1)
    assert (p.max(-1).values > 0.5).all()
    assert ((centers[top] - mean_plain).abs() < 0.1).all()


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


# --------------------------------------------------------------- target readout
def test_target_readout_starts_near_the_plain_network():
    plain = random_pfn(num_features=5, emsize=32, nlayers=3, nhead=4, nhid=48,
                       metric_attention=True)  # fmt: skip
    grown = PFNTransformer(**{**plain.config, "target_readout": True}, borders=plain.borders)
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == [
        "readout_head.bias", "readout_head.weight", "readout_norm.bias",
        "readout_norm.weight", "readout_scale.bias", "readout_scale.weight",
    ]  # fmt: skip
    grown.eval()
    tX, tY = _data()
    X = torch.rand(6, 3)
    p_plain = plain.predict(X, plain.encode_context(tX, tY)).softmax(-1)
    p_grown = grown.predict(X, grown.encode_context(tX, tY)).softmax(-1)
    # mixing weight sigmoid(-4) = 0.018 at the start: total variation at most that
    w = float(torch.sigmoid(torch.tensor(-4.0)))
    assert 0 < (p_grown - p_plain).abs().sum(-1).max() <= 2 * w + 1e-6


def test_target_readout_reads_observed_values():
    net = random_pfn(num_features=5, emsize=32, nlayers=2, nhead=4, nhid=48,
                     target_readout=True)  # fmt: skip
    with torch.no_grad():  # a dominant, narrow Gaussian on sharp readout weights
        net.readout_scale.weight.zero_()
        net.readout_scale.bias.fill_(math.log(1e5))
        net.readout_head.weight.zero_()
        net.readout_head.bias.copy_(torch.tensor([0.0, math.log(1e-3), 10.0]))
    tX, tY = _data(n=8)
    tY_nan = tY.clone()
    tY_nan[3] = float("nan")  # a missing target is not read out
    cache = net.encode_context(tX, tY_nan)
    p = net.predict(tX, cache).softmax(-1)  # at the observed inputs
    known = torch.arange(8) != 3
    # the most likely bucket holds the observed value, with most of the mass
    top = p.argmax(-1)
    y = tY[:, 0]
    assert ((net.borders[top] <= y) & (y < net.borders[top + 1]))[known].all()
    assert (p.max(-1).values[known] > 0.3).all()
    mu, sigma, omega = net.target_readout_params(
        torch.zeros(1, 8, 32), tX[None], tX[None], tY_nan[None])
    torch.testing.assert_close(mu[0, known], tY[known, 0], atol=1e-5, rtol=0)
    assert torch.isfinite(mu).all() and abs(float(mu[0, 3] - tY[3, 0])) > 1e-3
    # no known target at all: finite, and no readout for an empty context
    all_nan = torch.full_like(tY, float("nan"))
    assert torch.isfinite(net.predict(tX, net.encode_context(tX, all_nan))).all()
    assert net.target_readout_params(torch.zeros(1, 8, 32), tX[None], tX[:0][None],
                                     tY[:0][None]) is None  # fmt: skip


def test_target_readout_expanded_form_and_gradients_without_known_targets():
    net = random_pfn(num_features=5, emsize=32, nlayers=2, nhead=4, nhid=48,
                     metric_attention=True, target_readout=True).double()  # fmt: skip
    tX, tY = (t.double() for t in _data())
    X = torch.rand(4, 3, dtype=torch.float64)
    direct = net.predict(X, net.encode_context(tX, tY))
    net.metric_expanded = True
    torch.testing.assert_close(net.predict(X, net.encode_context(tX, tY)), direct,
                               atol=1e-9, rtol=0)  # fmt: skip
    # a batch element whose targets are all missing gives finite gradients everywhere
    Y2 = torch.stack([tY, torch.full_like(tY, float("nan"))])
    Xg = torch.rand(2, 4, 3, dtype=torch.float64, requires_grad=True)
    out = net(tX.expand(2, -1, -1), Y2, Xg)
    out.logsumexp(-1).sum().backward()
    assert torch.isfinite(Xg.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
