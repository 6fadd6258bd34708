#!/usr/bin/env python3
r"""The cells network (``tokens="cells"``): any `d` up to `num_features` with one set of
weights, an exact context cache, equivariance to the order of the input dimensions."""

from __future__ import annotations

import pytest
import torch
from botorch_community.pfn import build_network, KVCache, PFNCellTransformer, PFNConfig
from botorch_community.pfn.checkpoint import load_pretrained, save_pretrained
from botorch_community.pfn.testing import random_pfn
from botorch_community.pfn.transformer import PFNTransformer


def _net(**kw) -> PFNCellTransformer:
    opts = dict(num_features=60, emsize=16, nlayers=2, nhead=2, nhid=32, num_buckets=40,
                tokens="cells", seed=3)  # fmt: skip
    opts.update(kw)
    return random_pfn(**opts)


def _data(n: int, d: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=dtype)
    Y = (X.sin().sum(-1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g, dtype=dtype))
    return X, (Y - Y.mean()) / Y.std()


def test_build_network_picks_the_layout():
    assert type(build_network(num_features=5, emsize=8, nhead=2, nhid=8, nlayers=1,
                              num_buckets=10)) is PFNTransformer  # fmt: skip
    net = build_network(num_features=5, emsize=8, nhead=2, nhid=8, nlayers=1, num_buckets=10,
                        tokens="cells")  # fmt: skip
    assert isinstance(net, PFNCellTransformer) and isinstance(net, PFNTransformer)
    with pytest.raises(ValueError, match="tokens must be one of"):
        PFNConfig(num_features=5, tokens="columns")
    with pytest.raises(ValueError, match="metric_attention is an option of row tokens"):
        PFNConfig(num_features=5, tokens="cells", metric_attention=True)
    with pytest.raises(ValueError, match="build_network"):
        PFNTransformer(num_features=5, emsize=8, nhead=2, nhid=8, tokens="cells")
    # row configs are written as before (no `tokens` key)
    assert "tokens" not in PFNConfig(num_features=5).to_dict()
    assert PFNConfig(num_features=5, tokens="cells").to_dict()["tokens"] == "cells"


def test_weights_do_not_depend_on_d():
    net = _net()
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == sum(p.numel() for p in _net(num_features=100).parameters())
    for d in (1, 7, 60):
        X, Y = _data(9, d)
        out = net.double()(X[None], Y[None], torch.rand(1, 4, d, dtype=torch.float64))
        assert out.shape == (1, 4, 40) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="d=61 features but this network supports at most"):
        net(torch.rand(1, 5, 61), torch.randn(1, 5, 1), torch.rand(1, 2, 61))


@pytest.mark.parametrize("gp_head", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_matches_reference_values_and_gradients(gp_head, dtype):
    kw = dict(gp_head=gp_head, gp_refine_steps=3, gp_refine_min_context=5) if gp_head else {}
    net = _net(noise_hint=True, **kw).to(dtype)
    n, d = 15, 23
    X, Y = _data(n, d, dtype)
    Y[3] = float("nan")  # a pending row
    Yvar = torch.full_like(Y, 0.01)
    for test_shape in [(6,), (2, 6), (3, 1, 6)]:
        T = torch.rand(*test_shape, d, dtype=dtype, requires_grad=True)
        bshape = T.shape[:-2]
        ref = net(X.expand(*bshape, n, d), Y.expand(*bshape, n, 1), T,
                  train_Yvar=Yvar.expand(*bshape, n, 1))  # fmt: skip
        cache = net.encode_context(X, Y, Yvar)
        assert isinstance(cache, KVCache) and cache.keys[0].shape == (d + 1, 2, n + 1, 8)
        out = net.predict(T, cache)
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
        w = torch.randn(40, dtype=dtype)
        (g_ref,) = torch.autograd.grad((ref.softmax(-1) * w).sum(), T)
        (g_out,) = torch.autograd.grad((out.softmax(-1) * w).sum(), T)
        torch.testing.assert_close(g_out, g_ref, atol=tol, rtol=tol)
        assert g_out.abs().max() > 0


def test_batched_context_cache():
    # a batch of contexts against a batch of test sets, and against one shared test set
    net = _net().double()
    X = torch.rand(3, 10, 8, dtype=torch.float64)
    Y = torch.randn(3, 10, 1, dtype=torch.float64)
    T = torch.rand(3, 5, 8, dtype=torch.float64)
    cache = net.encode_context(X, Y)
    torch.testing.assert_close(net.predict(T, cache), net(X, Y, T))
    torch.testing.assert_close(net.predict(T[:1], cache), net(X, Y, T[:1].expand(3, 5, 8)))


def test_each_test_point_independent_of_its_batch():
    net = _net().double()
    X, Y = _data(12, 9)
    cache = net.encode_context(X, Y)
    T = torch.rand(7, 9, dtype=torch.float64)
    all_at_once = net.predict(T, cache)
    one_by_one = torch.cat([net.predict(T[i : i + 1], cache) for i in range(7)])
    torch.testing.assert_close(all_at_once, one_by_one)


def test_equivariant_to_the_order_of_input_dimensions():
    net = _net(gp_head=True, gp_refine_steps=2, gp_refine_min_context=5).double()
    X, Y = _data(14, 11)
    T = torch.rand(5, 11, dtype=torch.float64)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(1))
    a = net.predict(T, net.encode_context(X, Y))
    b = net.predict(T[:, perm], net.encode_context(X[:, perm], Y))
    torch.testing.assert_close(a, b)
    fit_a = net.encode_context(X, Y).gp_fit
    fit_b = net.encode_context(X[:, perm], Y).gp_fit
    # the lengthscale of each dimension moves with it
    torch.testing.assert_close(fit_a.inv_lengthscale[..., perm], fit_b.inv_lengthscale)


def test_gp_head_reads_one_lengthscale_per_dimension():
    net = _net(gp_head=True).double()
    for d in (3, 40):
        X, Y = _data(10, d)
        fit = net.encode_context(X, Y).gp_fit
        assert fit.theta.shape == (1, 4, d + 2)
        assert fit.inv_lengthscale.shape[-1] == d
    # the GP mixture at test points skips the layers and is finite
    mix = net.predict_gp_mixture(torch.rand(6, 40, dtype=torch.float64),
                                 net.encode_context(X, Y))  # fmt: skip
    assert mix.mean.shape[0] == 6  # `m x J'` (J' <= 4 particles after pruning)
    assert torch.isfinite(mix.mean).all() and (mix.var > 0).all()


def test_extend_context_matches_encoding_the_joined_rows():
    net = _net(gp_head=True, noise_hint=True).double()
    X, Y = _data(10, 6)
    extra_X = torch.rand(4, 2, 6, dtype=torch.float64)
    extra_Y = torch.randn(4, 2, 1, dtype=torch.float64)
    ext = net.extend_context(X, Y, extra_X, extra_Y, base_cache=net.encode_context(X, Y))
    T = torch.rand(4, 3, 6, dtype=torch.float64)
    joined_X = torch.cat([X.expand(4, -1, -1), extra_X], dim=-2)
    joined_Y = torch.cat([Y.expand(4, -1, -1), extra_Y], dim=-2)
    direct = net.encode_context(joined_X, joined_Y)
    torch.testing.assert_close(net.predict(T, ext), net.predict(T, direct))


def test_two_caches_of_one_network_do_not_mix():
    net = _net().double()
    X1, Y1 = _data(10, 5, seed=1)
    X2, Y2 = _data(17, 5, seed=2)
    T = torch.rand(4, 5, dtype=torch.float64)
    c1 = net.encode_context(X1, Y1)
    first = net.predict(T, c1)
    net.encode_context(X2, Y2)  # another owner's context
    torch.testing.assert_close(net.predict(T, c1), first)
    assert not torch.equal(net.predict(T, net.encode_context(X2, Y2)), first)


def test_empty_context_is_the_prior_predictive():
    net = _net().double()
    T = torch.rand(3, 7, dtype=torch.float64)
    X0, Y0 = torch.zeros(0, 7, dtype=torch.float64), torch.zeros(0, 1, dtype=torch.float64)
    torch.testing.assert_close(net.predict(T, net.encode_context(X0, Y0)),
                               net(X0[None], Y0[None], T[None])[0])  # fmt: skip


def test_training_loss_and_checkpoint_roundtrip(tmp_path):
    net = _net(gp_head=True, noise_hint=True).train()
    X = torch.rand(4, 12, 9)
    Y = torch.randn(4, 12, 1)
    nll = net(X[:, :8], Y[:, :8], X[:, 8:], test_Y=Y[:, 8:])
    assert nll.shape == (4, 4) and torch.isfinite(nll).all()
    nll.mean().backward()
    assert net.gp.feature_hyper.weight.grad is not None
    assert net.layers[0].feature_in.weight.grad.abs().sum() > 0
    save_pretrained(net.eval(), tmp_path / "cells")
    back = load_pretrained(tmp_path / "cells")
    assert isinstance(back, PFNCellTransformer) and back.config == net.config
    T = torch.rand(5, 9)
    torch.testing.assert_close(back.predict(T, back.encode_context(X[0], Y[0])),
                               net.predict(T, net.encode_context(X[0], Y[0])))  # fmt: skip


def test_refinement_needs_observations_per_dimension():
    # gp_refine_min_per_dim = 2: a context of n < 2 d keeps the network's proposals
    net = _net(gp_head=True, gp_refine_steps=5, gp_refine_min_context=5).double()
    X, Y = _data(30, 20)
    proposed = net.config.replace(gp_refine_steps=0)
    refined = net.encode_context(X, Y).gp_fit.theta
    net.config = proposed
    plain = net.encode_context(X, Y).gp_fit.theta
    assert not torch.allclose(refined, plain)
    net.config = proposed.replace(gp_refine_steps=5, gp_refine_min_per_dim=2.0)
    torch.testing.assert_close(net.encode_context(X, Y).gp_fit.theta, plain)  # 30 < 40
    net.config = net.config.replace(gp_refine_min_per_dim=1.0)  # 30 >= 20: refined
    torch.testing.assert_close(net.encode_context(X, Y).gp_fit.theta, refined)
    with pytest.raises(ValueError, match="gp_refine_min_per_dim"):
        PFNConfig(num_features=5, gp_refine_min_per_dim=-1.0)
