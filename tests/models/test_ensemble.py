#!/usr/bin/env python3
r"""Test-time ensembles over the prior's input symmetries (`PFNModel(ensemble_size=E)`)."""

import itertools
import math

import pytest
import torch
from botorch.models.transforms.input import Normalize
from botorch_community.models.prior_fitted_network import (
    MultivariatePFNModel,
    PFNModel,
)
from botorch_community.pfn.symmetries import (
    apply_input_symmetries,
    input_symmetries,
    num_input_symmetries,
)
from botorch_community.pfn.testing import random_pfn


VARIANTS = {"plain": {}, "metric": {"metric_attention": True},
            "metric+gp": {"metric_attention": True, "gp_head": True, "gp_particles": 2}}  # fmt: skip


@pytest.fixture(params=list(VARIANTS))
def net(request):
    return random_pfn(num_features=4, emsize=32, nlayers=2, nhead=2, nhid=48,
                      **VARIANTS[request.param])  # fmt: skip


def _data(n=10, d=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    Y = X[:, :1] * 4 + (3 * X).sin().sum(-1, keepdim=True) - X[:, -1:] ** 2
    return X.to(dtype), Y.to(dtype)


# ------------------------------------------------------------------ the maps
@pytest.mark.parametrize("d", [1, 2, 3, 7])
def test_maps_are_distinct_and_start_with_identity(d):
    total = num_input_symmetries(d)
    assert total == math.factorial(d) * 2**d
    num = min(total, 12)
    perms, flips = input_symmetries(d, num)
    assert perms.shape == flips.shape == (num, d)
    assert torch.equal(perms[0], torch.arange(d)) and not flips[0].any()
    for p in perms:  # each a permutation
        assert torch.equal(p.sort().values, torch.arange(d))
    keys = {(tuple(p.tolist()), tuple(f.tolist())) for p, f in zip(perms, flips)}
    assert len(keys) == num
    # reproducible
    p2, f2 = input_symmetries(d, num)
    assert torch.equal(perms, p2) and torch.equal(flips, f2)
    with pytest.raises(ValueError, match="between 1 and"):
        input_symmetries(d, total + 1)


def test_apply_permutes_and_reflects():
    X = torch.tensor([[0.1, 0.2, 0.3]])
    perms = torch.tensor([[0, 1, 2], [2, 0, 1]])
    flips = torch.tensor([[False, False, False], [True, False, False]])
    out = apply_input_symmetries(X, perms, flips)
    assert out.shape == (2, 1, 3)
    torch.testing.assert_close(out[0], X)
    torch.testing.assert_close(out[1], torch.tensor([[0.7, 0.1, 0.2]]))
    with pytest.raises(ValueError, match="d=3"):
        apply_input_symmetries(torch.rand(2, 4), perms, flips)


# ----------------------------------------------------------------- the model
def _tol(model: PFNModel) -> dict:
    r"""Agreement to the round-off of the dtype the network computes in (one batched
    pass against separate ones): float64, or float32 for the GP head's predictive."""
    if model.network_dtype == torch.float64:
        return {"atol": 1e-12, "rtol": 1e-9}
    return {"atol": 1e-6, "rtol": 1e-4}


def test_ensemble_is_mean_of_member_models(net):
    r"""The ensemble's probabilities are the average of single models fitted on the
    mapped data and evaluated at the mapped test points."""
    X, Y = _data()
    E = 4
    model = PFNModel(X, Y, model=net, ensemble_size=E)
    x = torch.rand(5, 2, 3, dtype=torch.float64)
    probs = model.posterior(x).probabilities
    perms, flips = input_symmetries(3, E)
    Xe, xe = apply_input_symmetries(X, perms, flips), apply_input_symmetries(x, perms, flips)
    members = [PFNModel(Xe[e], Y, model=net).posterior(xe[e]).probabilities for e in range(E)]
    torch.testing.assert_close(probs, torch.stack(members).mean(0), **_tol(model))
    # and it differs from the plain model (the random network is not invariant)
    assert (probs - members[0]).abs().max() > 1e-6


def test_ensemble_size_one_is_the_plain_model(net):
    X, Y = _data()
    x = torch.rand(4, 1, 3, dtype=torch.float64)
    a = PFNModel(X, Y, model=net).posterior(x).probabilities
    b = PFNModel(X, Y, model=net, ensemble_size=1).posterior(x).probabilities
    assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(4, 3), (5, 2, 3), (2, 3, 1, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pending", [False, True])
@pytest.mark.parametrize("predictive", ["mixture", None])  # None: the default
def test_ensemble_cached_equals_reference(net, shape, dtype, pending, predictive):
    X, Y = _data(dtype=dtype)
    X5 = X * 5
    tf = [Normalize(3, bounds=torch.tensor([[0.0] * 3, [5.0] * 3])) for _ in range(2)]
    cached = PFNModel(X5, Y, model=net, ensemble_size=3, input_transform=tf[0],
                      predictive=predictive)  # fmt: skip
    reference = PFNModel(X5, Y, model=net, ensemble_size=3, input_transform=tf[1],
                         cache_context=False, predictive=predictive)  # fmt: skip
    # (the GP-only predictive has its own, finer borders)
    pending_X = torch.rand(2, 3, dtype=dtype) * 5 if pending else None
    x = (torch.rand(*shape, dtype=dtype) * 5).requires_grad_(True)
    outs = []
    for m in (cached, reference):
        post = m.posterior(x, pending_X=pending_X)
        assert post.probabilities.shape[:-1] == shape[:-1]
        mean = post.mean
        (g,) = torch.autograd.grad((mean * torch.arange(mean.numel()).view_as(mean)).sum(), x)
        outs.append((post.probabilities.detach(), mean.detach(), g))
    # to the round-off of the dtype the network computes in (float32 for the GP head's
    # predictive: the network only proposes its particles)
    atol = 1e-5 if torch.float32 in (dtype, cached.network_dtype) else 1e-10
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=atol * a.abs().max().clamp_min(1), rtol=0)
    assert outs[0][2].abs().max() > 0
    assert cached.num_encodings == 1
    cached.posterior(x.detach(), pending_X=pending_X)
    assert cached.num_encodings == 1  # the ensemble's contexts are cached once


def test_ensemble_is_capped_and_validated(net):
    X, Y = _data(d=1)
    assert PFNModel(X, Y, model=net, ensemble_size=8).ensemble_size == 2
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="ensemble_size"):
            PFNModel(X, Y, model=net, ensemble_size=bad)


def test_ensemble_survives_conditioning(net):
    X, Y = _data()
    m = PFNModel(X[:7], Y[:7], model=net, ensemble_size=4)
    m2 = m.condition_on_observations(X[7:], Y[7:])
    assert m2.ensemble_size == 4
    x = torch.rand(3, 3, dtype=torch.float64)
    full = PFNModel(X, Y, model=net, ensemble_size=4)
    torch.testing.assert_close(m2.posterior(x).mean, full.posterior(x).mean)


def test_multivariate_ensemble_keeps_its_cache(net):
    X, Y = _data()
    m = MultivariatePFNModel(X, Y, model=net, ensemble_size=4)
    x = torch.rand(2, 3, 3, dtype=torch.float64, requires_grad=True)
    post = m.posterior(x)
    R = post.correlation_matrix
    torch.testing.assert_close(R.diagonal(dim1=-2, dim2=-1), torch.ones(2, 3, dtype=torch.float64))
    (g,) = torch.autograd.grad(post.mean.sum() + R.sum(), x)
    assert torch.isfinite(g).all()
    m.posterior(x.detach())
    assert m.num_encodings == 1  # correlations do not replace the ensemble's cache
    # marginals are the ensemble's
    marg = PFNModel(X, Y, model=net, ensemble_size=4).posterior(x.detach()).probabilities
    torch.testing.assert_close(post.probabilities, marg)


def test_ensemble_matches_exhaustive_average_for_d1(net):
    r"""For `d = 1` the two members are the identity and the reflection."""
    X, Y = _data(d=1)
    x = torch.rand(6, 1, 1, dtype=torch.float64)
    model = PFNModel(X, Y, model=net, ensemble_size=2)
    ens = model.posterior(x).probabilities
    ref = sum(PFNModel(t(X), Y, model=net).posterior(t(x)).probabilities
              for t in (lambda z: z, lambda z: 1 - z)) / 2
    torch.testing.assert_close(ens, ref, **_tol(model))
    assert len(list(itertools.permutations(range(1)))) * 2 == num_input_symmetries(1)
