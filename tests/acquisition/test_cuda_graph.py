#!/usr/bin/env python3
r"""CUDA-graph replay of acquisition calls: equal to the eager calls (values and
gradients), captured again when the context changes, input errors still raised.

The CUDA tests run where a GPU is (the device machine); on CPU the wrapper must be a
transparent pass-through, and the pieces it builds on (deferred checks, replay state,
the replayed backward) are tested directly.
"""

from __future__ import annotations

import pytest
import torch
from botorch.models.transforms.input import Normalize
from botorch.optim import optimize_acqf

from botorch_community.acquisition.cuda_graph import CUDAGraphAcquisitionFunction, _Replayed
from botorch_community.acquisition.discretized import (
    DiscretizedExpectedImprovement,
    DiscretizedLogExpectedImprovement,
)
from botorch_community.models.deferred_checks import (
    all_passed,
    check_or_defer,
    deferred_checks,
)
from botorch_community.models.prior_fitted_network import PFNModel
from botorch_community.pfn.testing import random_pfn

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _data(n=12, d=3, device="cpu", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = (torch.rand(n, d, generator=g, dtype=dtype) * 4.0 - 2.0).to(device)
    Y = (X.sin().sum(-1, keepdim=True) + 0.5 * X[:, :1] ** 2).to(device)
    return X, Y


def _model(device="cpu", dtype=torch.float64, gp_head=True, **kw):
    net = random_pfn(num_features=4, gp_head=gp_head, seed=1).to(device)
    X, Y = _data(device=device, dtype=dtype)
    bounds = torch.tensor([[-2.0] * 3, [2.0] * 3], dtype=dtype, device=device)
    model = PFNModel(X, Y, model=net, input_transform=Normalize(3, bounds=bounds), **kw)
    return model, bounds


# ------------------------------------------------------------------ on any device
def test_deferred_checks_collect_instead_of_raising():
    bad = torch.tensor(False)
    with pytest.raises(ValueError, match="boom"):
        check_or_defer(bad, lambda: ValueError("boom"))
    with deferred_checks() as checks:
        check_or_defer(bad, lambda: ValueError("boom"))
        check_or_defer(torch.tensor(True), lambda: ValueError("other"))
    assert len(checks) == 2
    assert not bool(all_passed(checks, bad))
    assert bool(all_passed([], bad))


def test_model_defers_its_input_check():
    model, _ = _model()
    X = torch.full((2, 1, 3), float("nan"), dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN or inf"):
        model.posterior(X)
    with deferred_checks() as checks:
        model.posterior(X)  # no error: the verdict is recorded
    assert len(checks) == 1 and not bool(checks[0])


def test_replayed_backward_is_per_element_scaling():
    X = torch.rand(4, 1, 2, dtype=torch.float64, requires_grad=True)
    grad = torch.rand(4, 1, 2, dtype=torch.float64)
    value = torch.rand(4, dtype=torch.float64)
    out = _Replayed.apply(X, value.clone(), grad)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    (g,) = torch.autograd.grad((w * out).sum(), X)
    torch.testing.assert_close(g, w.view(-1, 1, 1) * grad)
    torch.testing.assert_close(out, value)


def test_replay_state_tracks_what_a_capture_relies_on():
    model, _ = _model()
    assert model.replay_state() is None  # nothing cached
    with model.cache_training_context():
        assert model.replay_state() is None  # nothing encoded yet
        model.posterior(torch.rand(2, 1, 3, dtype=torch.float64))
        s0 = model.replay_state()
        assert s0 is not None and model.replay_state() == s0
        model.posterior(torch.rand(5, 1, 3, dtype=torch.float64))
        assert model.replay_state() == s0  # steady state: no change
        model.train_Y.add_(1.0)  # an in-place edit of the data
        assert model.replay_state() != s0
        model.posterior(torch.rand(2, 1, 3, dtype=torch.float64))  # re-encodes
        s1 = model.replay_state()
        model.input_transform._offset.add_(0.1)  # an edit of the transform's state
        assert model.replay_state() != s1
    assert model.replay_state() is None


def test_context_follows_a_learnable_input_transform():
    r"""A transform's parameters (e.g. Kumaraswamy warping) are part of the context's
    sources: editing them rebuilds the context and re-encodes."""
    from botorch.models.transforms.input import ChainedInputTransform, Warp

    model, _ = _model()
    tf = ChainedInputTransform(norm=model.input_transform, warp=Warp(d=3, indices=[0, 1, 2]))
    model = PFNModel(model.train_X, model.train_Y, model=model.pfn, input_transform=tf)
    Xq = torch.rand(4, 1, 3, dtype=torch.float64) * 4 - 2
    with model.cache_training_context():
        before = model.posterior(Xq).mean
        with torch.no_grad():
            for p in tf["warp"].parameters():
                p.add_(0.5)
        after = model.posterior(Xq).mean
        assert model.num_encodings == 2
    fresh = PFNModel(model.train_X, model.train_Y, model=model.pfn, input_transform=tf)
    torch.testing.assert_close(after, fresh.posterior(Xq).mean)
    assert not torch.allclose(before, after)


def test_steady_state_posterior_calls_reuse_the_context():
    model, _ = _model()
    with model.cache_training_context():
        for _ in range(3):
            model.posterior(torch.rand(4, 1, 3, dtype=torch.float64))
        assert model.num_encodings == 1
        ctx = model._context(None, False)
        assert model._context(None, False) is ctx
        model.train_X = model.train_X.clone()  # new tensor, same values
        assert model._context(None, False) is not ctx
        model.posterior(torch.rand(4, 1, 3, dtype=torch.float64))
        assert model.num_encodings == 1  # equal values: the cache stays valid
        model.train_X = model.train_X + 0.01
        model.posterior(torch.rand(4, 1, 3, dtype=torch.float64))
        assert model.num_encodings == 2
        # rescaled targets leave the standardised context (and the cache) as it was;
        # the next calls match it by identity again, without comparing values (a host
        # sync on a GPU, which would keep the call from being captured)
        model.train_Y.mul_(2.0)
        model.posterior(torch.rand(4, 1, 3, dtype=torch.float64))
        assert model.num_encodings == 2
        ctx = model._context(None, False)
        assert model._cache_key.same_sources(ctx.X, ctx.Y, ctx.Yvar)


def test_passes_through_off_cuda():
    model, _ = _model()
    acqf = DiscretizedLogExpectedImprovement(model, best_f=model.train_Y.max())
    wrapped = CUDAGraphAcquisitionFunction(acqf)
    X = torch.rand(5, 1, 3, dtype=torch.float64, requires_grad=True)
    with model.cache_training_context():
        v = wrapped(X)
        (g,) = torch.autograd.grad(v.sum(), X)
        v_ref = acqf(X)
        (g_ref,) = torch.autograd.grad(v_ref.sum(), X)
    torch.testing.assert_close(v, v_ref, rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
    assert wrapped.num_captures == 0 and wrapped.X_pending is None


def test_wrapper_state_follows_incumbent_pending_points_and_predictive():
    model, _ = _model()
    acqf = DiscretizedLogExpectedImprovement(model, best_f=model.train_Y.max())
    wrapped = CUDAGraphAcquisitionFunction(acqf)
    with model.cache_training_context():
        assert wrapped._replay_state() is None  # nothing encoded yet
        acqf(torch.rand(3, 1, 3, dtype=torch.float64))
        s0 = wrapped._replay_state()
        assert s0 is not None and wrapped._replay_state() == s0
        acqf.best_f.fill_(float(model.train_Y.max()) + 1.0)  # a new incumbent
        s1 = wrapped._replay_state()
        assert s1 != s0
        wrapped.set_X_pending(torch.rand(2, 3, dtype=torch.float64))  # new pending points
        assert wrapped._replay_state() != s1 and wrapped.X_pending is acqf.X_pending
    mixture = PFNModel(model.train_X, model.train_Y, model=model.pfn, predictive="mixture",
                       input_transform=model.input_transform)  # fmt: skip
    other = CUDAGraphAcquisitionFunction(
        DiscretizedLogExpectedImprovement(mixture, best_f=mixture.train_Y.max())
    )
    with mixture.cache_training_context():
        mixture.posterior(torch.rand(2, 1, 3, dtype=torch.float64))
        assert other._replay_state() is None  # the full output is never captured


# ------------------------------------------------------------------ CUDA only
def _value_and_grad(acqf, X):
    X = X.clone().requires_grad_(True)
    v = acqf(X)
    (g,) = torch.autograd.grad(v.sum(), X)
    return v.detach(), g


@CUDA
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gp_head", [True, False])
@pytest.mark.parametrize("acqf_cls", [DiscretizedLogExpectedImprovement, DiscretizedExpectedImprovement])
def test_replay_equals_eager(dtype, gp_head, acqf_cls):
    model, _ = _model("cuda", dtype, gp_head=gp_head)
    acqf = acqf_cls(model, best_f=model.train_Y.max(), maximize=gp_head)
    wrapped = CUDAGraphAcquisitionFunction(acqf)
    tol = dict(rtol=1e-6, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=1e-5)
    with model.cache_training_context():
        for b in (10, 10, 10, 7, 3, 1, 32, 10):  # padded to 16, 8, 4, 1, 32
            X = torch.rand(b, 1, 3, dtype=dtype, device="cuda", generator=None) * 4 - 2
            for _ in range(2):
                v, g = _value_and_grad(wrapped, X)
            v_ref, g_ref = _value_and_grad(acqf, X)
            torch.testing.assert_close(v, v_ref, **tol)
            torch.testing.assert_close(g, g_ref, **tol)
            with torch.no_grad():
                torch.testing.assert_close(wrapped(X), v_ref, **tol)
    if gp_head:
        assert wrapped.num_replays > 0 and wrapped.num_captures >= 5
    else:  # the network's full output is never captured: eager pass-through
        assert wrapped.num_captures == 0
    assert model.num_encodings == 1


@CUDA
def test_capture_follows_the_context():
    model, _ = _model("cuda")
    acqf = DiscretizedLogExpectedImprovement(model, best_f=model.train_Y.max())
    wrapped = CUDAGraphAcquisitionFunction(acqf)
    X = torch.rand(8, 1, 3, dtype=torch.float64, device="cuda") * 4 - 2
    with model.cache_training_context():
        for _ in range(3):
            _value_and_grad(wrapped, X)
        captures = wrapped.num_captures
        model.train_Y.mul_(2.0)  # the data changed: never replay the old context
        v, g = _value_and_grad(wrapped, X)
        v_ref, g_ref = _value_and_grad(acqf, X)
        torch.testing.assert_close(v, v_ref)
        torch.testing.assert_close(g, g_ref)
        acqf.best_f.fill_(float(model.train_Y.max()) + 1.0)  # the incumbent changed
        for _ in range(3):
            v, g = _value_and_grad(wrapped, X)
        v_ref, g_ref = _value_and_grad(acqf, X)
        torch.testing.assert_close(v, v_ref)
        torch.testing.assert_close(g, g_ref)
        assert wrapped.num_captures > captures
        bad = X.clone()
        bad[2, 0, 1] = float("nan")
        with pytest.raises(ValueError, match="NaN or inf"):
            wrapped(bad)


@CUDA
def test_optimize_acqf_with_graphs_matches_eager():
    model, bounds = _model("cuda")
    acqf = DiscretizedLogExpectedImprovement(model, best_f=model.train_Y.max())
    wrapped = CUDAGraphAcquisitionFunction(acqf)
    kw = dict(bounds=bounds, q=1, num_restarts=8, raw_samples=256)
    with model.cache_training_context():
        torch.manual_seed(0)
        x_ref, v_ref = optimize_acqf(acqf, **kw)
        torch.manual_seed(0)
        x, v = optimize_acqf(wrapped, **kw)
    assert wrapped.num_replays > 5
    torch.testing.assert_close(v, v_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(x, x_ref, rtol=1e-3, atol=1e-3)
