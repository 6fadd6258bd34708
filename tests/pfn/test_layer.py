#!/usr/bin/env python3
r"""The transformer layer: metric attention (a learned distance term in the logits)."""

import itertools
import math

import pytest
import torch
from botorch_community.pfn import PFNTransformer
from botorch_community.pfn.layer import expanded_metric_dist
from botorch_community.pfn.testing import random_pfn


def _data(n=9, d=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g), torch.randn(n, 1, generator=g)


# ---------------------------------------------------------------- metric attention
def test_metric_attention_starts_as_the_plain_network():
    plain = random_pfn(num_features=5, emsize=32, nlayers=3, nhead=4, nhid=48)
    grown = PFNTransformer(plain.config.replace(metric_attention=True), borders=plain.borders)
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
