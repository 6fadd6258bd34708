#!/usr/bin/env python3
r"""The GP head: exact GP algebra, marginal-likelihood weights, missing targets, and a
start near the plain network."""

import math

import pytest
import torch
from gpytorch.kernels import MaternKernel, RBFKernel

from botorch_community.pfn import gp_head
from botorch_community.pfn.gp_head import GP_JITTER, GPHead
from botorch_community.pfn.testing import random_pfn
from botorch_community.pfn.transformer import PFNTransformer


def _head_with(ls, os, noise, d, num_features=4, emsize=8):
    r"""A head whose two particles (Matérn, RBF) have fixed hyperparameters."""
    head = GPHead(emsize, num_features, particles=2).double()
    nf = num_features
    with torch.no_grad():
        head.hyper.weight.zero_()
        bias = head.hyper.bias.view(2, nf + 3)
        for j in range(2):
            bias[j, :d] = torch.as_tensor(ls[j]).log() - 0.5 * math.log(d)
            bias[j, nf] = math.log(os[j])
            bias[j, nf + 1] = math.log(noise[j])
            bias[j, nf + 2] = 0.0
    return head


def _reference_kernels(j, ls, os, noise, X, Xq):
    r"""gpytorch's kernels for particle `j` of :func:`_head_with` (Matérn-5/2, then RBF):
    the noisy context kernel matrix (with the head's jitter), the cross-kernel and the
    kernel at the queries."""
    d = X.shape[-1]
    kern = (MaternKernel(nu=2.5, ard_num_dims=d) if j == 0 else RBFKernel(ard_num_dims=d)).double()
    kern.lengthscale = torch.tensor(ls[j], dtype=torch.float64)
    with torch.no_grad():
        eye = torch.eye(X.shape[-2], dtype=torch.float64)
        K = kern(X).to_dense() * os[j] + (noise[j] + GP_JITTER * os[j]) * eye
        return K, kern(Xq, X).to_dense() * os[j], kern(Xq).to_dense() * os[j]


def _reference_head():
    r"""`(d, ls, os, noise, head)`: a head of two fixed particles with distinct ARD
    lengthscales, outputscales and noise levels (for comparisons with gpytorch)."""
    d = 3
    ls = [[0.3, 0.5, 0.8], [0.4, 0.2, 1.0]]
    os, noise = [1.3, 0.7], [1e-3, 0.05]
    return d, ls, os, noise, _head_with(ls, os, noise, d)


def _data(n=7, d=3, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(b, n, d, generator=g, dtype=torch.float64)
    Y = torch.sin(6 * X.sum(-1, keepdim=True)) + 0.1 * torch.randn(b, n, 1, generator=g, dtype=torch.float64)
    Xq = torch.rand(b, 5, d, generator=g, dtype=torch.float64)
    return X, Y, Xq


def test_particles_are_exact_gps_weighted_by_marginal_likelihood():
    d, ls, os, noise, head = _reference_head()
    X, Y, Xq = _data(d=d)
    fit = head.fit(torch.zeros(2, 8, dtype=torch.float64), X, Y)
    mu, var = head.predict(fit, Xq)  # `b x J x m`
    lml = []
    for j in range(2):
        K, ks, _ = _reference_kernels(j, ls, os, noise, X, Xq)
        with torch.no_grad():
            mu_ref = (ks @ torch.linalg.solve(K, Y)).squeeze(-1)
            var_ref = os[j] - (ks * torch.linalg.solve(K, ks.transpose(-1, -2)).transpose(-1, -2)).sum(-1) + noise[j]
            lml.append(torch.distributions.MultivariateNormal(torch.zeros(7, dtype=torch.float64), K).log_prob(Y.squeeze(-1)))
        torch.testing.assert_close(mu[:, j], mu_ref, atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(var[:, j], var_ref, atol=1e-7, rtol=1e-6)
    # zero learned logits: the weights are the normalised marginal likelihoods
    torch.testing.assert_close(fit.log_weights, torch.log_softmax(torch.stack(lml, -1), -1))


def test_constant_mean_is_the_marginal_likelihood_maximiser():
    r"""With ``constant_mean`` each particle is the GP with the constant mean that
    maximises its marginal likelihood (the GLS estimate, as a fitted ConstantMean):
    predictions equal the reference GP's with that mean, the weights use the profiled
    likelihood, and no other constant gives a higher one."""
    d, ls, os, noise, head = _reference_head()
    X, Y, Xq = _data(d=d, n=9)
    Y = Y + 0.4  # a context whose GLS mean is not zero
    fit = head.fit(torch.zeros(2, 8, dtype=torch.float64), X, Y, constant_mean=True)
    mu, var = head.predict(fit, Xq)
    lml = []
    for j in range(2):
        K, ks, _ = _reference_kernels(j, ls, os, noise, X, Xq)
        one = torch.ones(2, 9, 1, dtype=torch.float64)
        m = (one.mT @ torch.linalg.solve(K, Y)) / (one.mT @ torch.linalg.solve(K, one))  # `b x 1 x 1`
        torch.testing.assert_close(fit.mean[:, j], m.view(2), atol=1e-7, rtol=1e-6)
        mu_ref = (m + ks @ torch.linalg.solve(K, Y - m)).squeeze(-1)
        var_ref = os[j] - (ks * torch.linalg.solve(K, ks.mT).mT).sum(-1) + noise[j]
        torch.testing.assert_close(mu[:, j], mu_ref, atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(var[:, j], var_ref, atol=1e-7, rtol=1e-6)

        def log_lik(c):  # `b`: the marginal likelihood with constant mean `c` (`b`)
            mvn = torch.distributions.MultivariateNormal(torch.zeros(9, dtype=torch.float64), K)
            return mvn.log_prob(Y.squeeze(-1) - c.unsqueeze(-1))

        best = log_lik(m.view(2))
        lml.append(best)
        for delta in (-0.05, 0.05):  # the GLS mean is the maximiser
            assert bool((log_lik(m.view(2) + delta) < best).all())
    torch.testing.assert_close(fit.log_weights, torch.log_softmax(torch.stack(lml, -1), -1))
    # off: zero means, as before
    plain = head.fit(torch.zeros(2, 8, dtype=torch.float64), X, Y)
    assert bool((plain.mean == 0).all())


def test_constant_mean_lowers_the_level_far_from_clustered_high_targets():
    r"""BO data: many high targets clustered near the optimum and a few low ones spread
    out. Far from the data the zero-mean head reverts to the context's mean; the GLS
    mean counts the cluster as few rows and reverts lower, as a fitted GP does."""
    g = torch.Generator().manual_seed(3)
    spread = torch.rand(1, 8, 2, generator=g, dtype=torch.float64)
    cluster = 0.5 + 0.03 * torch.randn(1, 24, 2, generator=g, dtype=torch.float64)
    X = torch.cat([spread, cluster], -2)
    Y = (-10 * (X - 0.5).square().sum(-1, keepdim=True)).exp()
    Y = (Y - Y.mean()) / Y.std()
    head = _head_with([[0.2, 0.2], [0.2, 0.2]], [1.0, 1.0], [1e-4, 1e-4], d=2)
    far = torch.tensor([[[-1.0, -1.0], [2.0, 2.0], [-1.0, 2.0]]], dtype=torch.float64)  # beyond the kernel's reach
    token = torch.zeros(1, 8, dtype=torch.float64)
    mu_zero = head.predict(head.fit(token, X, Y), far)[0]
    mu_gls = head.predict(head.fit(token, X, Y, constant_mean=True), far)[0]
    assert float(mu_zero.abs().max()) < 0.3  # back to the context's mean
    assert bool((mu_gls < mu_zero - 0.5).all())


def test_missing_targets_are_dropped_rows():
    head = _head_with([[0.3] * 3, [0.5] * 3], [1.0, 2.0], [1e-4, 0.1], d=3)
    with torch.no_grad():  # context-dependent particles
        head.hyper.weight.normal_(0.0, 0.1)
    X, Y, Xq = _data()
    token = torch.randn(2, 8, dtype=torch.float64)
    Y_nan = Y.clone()
    Y_nan[:, 2] = float("nan")
    keep = [i for i in range(7) if i != 2]
    fit_nan = head.fit(token, X, Y_nan)
    fit_drop = head.fit(token, X[:, keep], Y[:, keep])
    for a, b in zip(head.predict(fit_nan, Xq), head.predict(fit_drop, Xq)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(fit_nan.log_weights, fit_drop.log_weights, atol=1e-10, rtol=0)


def test_noise_free_particle_interpolates():
    head = _head_with([[0.4] * 2, [0.4] * 2], [1.0, 1.0], [1e-6, 1e-6], d=2)
    X, _, _ = _data(d=2, n=10)
    Y = torch.sin(3 * X.sum(-1, keepdim=True))  # a smooth, noise-free objective
    fit = head.fit(torch.zeros(2, 8, dtype=torch.float64), X, Y)
    mu, var = head.predict(fit, X)
    torch.testing.assert_close(mu, Y.squeeze(-1).unsqueeze(1).expand_as(mu), atol=1e-4, rtol=0)
    assert float(var.max()) < 1e-4


def test_gp_head_starts_near_the_plain_network():
    plain = random_pfn(num_features=5, emsize=32, nlayers=2, nhead=4, nhid=48,
                       metric_attention=True)  # fmt: skip
    grown = PFNTransformer(plain.config.replace(gp_head=True), borders=plain.borders)
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("gp.") for k in missing)
    grown.eval()
    g = torch.Generator().manual_seed(3)
    tX, tY, X = torch.rand(9, 3, generator=g), torch.randn(9, 1, generator=g), torch.rand(6, 3, generator=g)
    p_plain = plain.predict(X, plain.encode_context(tX, tY)).softmax(-1)
    p_grown = grown.predict(X, grown.encode_context(tX, tY)).softmax(-1)
    tv = 0.5 * (p_grown - p_plain).abs().sum(-1)
    w = float(torch.sigmoid(torch.tensor(-2.0)))
    assert 0 < float(tv.max()) <= w + 1e-6


def test_gp_head_validation_and_config():
    with pytest.raises(ValueError, match="gp_particles"):
        PFNTransformer(num_features=3, emsize=16, nlayers=1, nhead=2, nhid=16,
                       num_buckets=10, gp_head=True, gp_particles=0)  # fmt: skip
    net = PFNTransformer(num_features=3, emsize=16, nlayers=1, nhead=2, nhid=16,
                         num_buckets=10, gp_head=True, gp_particles=3)  # fmt: skip
    assert net.config.gp_head and net.config.gp_particles == 3
    assert "gp_head" in net.config.to_dict()
    assert "gp_head" not in PFNTransformer(num_features=3, emsize=16, nlayers=1, nhead=2,
                                           nhid=16, num_buckets=10).config.to_dict()  # fmt: skip
    # the constant mean: an inference setting, recorded only where on, validated
    assert "gp_constant_mean" not in net.config.to_dict()
    on = net.config.replace(gp_constant_mean=True)
    assert on.to_dict()["gp_constant_mean"] is True and on.architecture() == net.config.architecture()
    assert type(on).from_dict(on.to_dict()) == on
    with pytest.raises(ValueError, match="gp_constant_mean"):
        net.config.replace(gp_constant_mean=1)


def test_shipped_network_fits_constant_means():
    from botorch_community.pfn import load_pretrained

    assert load_pretrained().config.gp_constant_mean


def test_cholesky_falls_back_to_jitter_only_where_needed():
    from botorch_community.pfn.gp_head import _robust_cholesky

    K = torch.ones(1, 2, 4, 4, dtype=torch.float64)  # rank one: not positive definite
    K[0, 1] = torch.eye(4, dtype=torch.float64)  # positive definite
    diag = torch.zeros(1, 2, 4, dtype=torch.float64)
    L = _robust_cholesky(K, diag, torch.ones(1, 2, dtype=torch.float64))
    assert torch.isfinite(L).all()
    torch.testing.assert_close(L[0, 1], torch.eye(4, dtype=torch.float64))  # untouched
    recon = L[0, 0] @ L[0, 0].T - K[0, 0]
    assert 0 < float(recon.diagonal().min()) <= 1e-4  # only a small jitter was added
    with pytest.raises(RuntimeError, match="not positive definite"):
        _robust_cholesky(torch.full((1, 1, 2, 2), float("nan"), dtype=torch.float64),
                         torch.zeros(1, 1, 2, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))


@pytest.mark.parametrize("variant", [{}, {"gp_head": True}])
def test_training_loss_path_equals_bar_nll_of_the_full_output(variant):
    from botorch_community.pfn.bar_distribution import bar_nll

    net = random_pfn(num_features=4, emsize=32, nlayers=2, nhead=4, nhid=48,
                     metric_attention=True, **variant)  # fmt: skip
    g = torch.Generator().manual_seed(5)
    tX, tY = torch.rand(3, 8, 2, generator=g), torch.randn(3, 8, 1, generator=g)
    tY[0, 1] = float("nan")  # a missing context target
    X, Y = torch.rand(3, 6, 2, generator=g), torch.randn(3, 6, 1, generator=g)
    Y[1, 2], Y[2, 0], Y[2, 3] = 40.0, -40.0, float("nan")  # outside the borders; missing
    net.train()
    ref = bar_nll(net(tX, tY, X).float(), Y, net.borders)
    out = net(tX, tY, X, test_Y=Y)
    assert out.shape == (3, 6) and bool(torch.isnan(out[2, 3])) and bool(torch.isnan(ref[2, 3]))
    ok = ~torch.isnan(ref)
    torch.testing.assert_close(out[ok], ref[ok], atol=2e-5, rtol=1e-6)
    # and its gradients w.r.t. the weights
    (g_out,) = torch.autograd.grad(out[ok].sum(), net.x_encoder.weight)
    (g_ref,) = torch.autograd.grad(ref[ok].sum(), net.x_encoder.weight)
    torch.testing.assert_close(g_out, g_ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="reference path"):
        net(None, None, X[0], kv_cache=net.encode_context(tX[0], tY[0]), test_Y=Y[0])
    # an empty context: the bar part alone
    e = net(tX[:, :0], tY[:, :0], X, test_Y=Y)
    torch.testing.assert_close(e[ok], bar_nll(net(tX[:, :0], tY[:, :0], X).float(), Y, net.borders)[ok])


# ------------------------------------------------------------ particle refinement
def _refining_head():
    head = _head_with([[0.05] * 3, [3.0] * 3], [0.2, 5.0], [0.3, 1e-5], d=3)  # poor guesses
    with torch.no_grad():
        head.hyper.weight.normal_(0.0, 0.1)  # context-dependent proposals
    return head.eval()


def test_refinement_raises_each_particles_marginal_likelihood_in_eval_only(monkeypatch):
    monkeypatch.setattr(gp_head, "PRUNE_WEIGHT", 0.0)  # every particle's fit, to compare
    X, Y, _ = _data(n=12, b=3)
    token = torch.randn(3, 8, dtype=torch.float64)
    head = _refining_head()
    with torch.no_grad():  # a posterior call: refinement still gets its own graph
        refined = head.fit(token, X, Y, refine_steps=20, refine_min_context=8)
    proposed = head.fit(token, X, Y)
    y = Y.squeeze(-1)

    def lml(fit):  # each particle's own log marginal likelihood, from its factor
        quad = (y.unsqueeze(1) * fit.alpha).sum(-1)
        return -0.5 * quad - fit.L.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    gain = lml(refined) - lml(proposed)  # `b x J`
    assert bool((gain > 0).all()) and float(gain.max()) > 100.0  # every particle gains
    # training mode never refines (the loss trains the proposals themselves)
    head.train()
    for a, b in zip(head.fit(token, X, Y, 20, 8).tensors(), proposed.tensors()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("constant_mean", [False, True])
@pytest.mark.parametrize("known", [False, True])
@pytest.mark.parametrize("missing", [False, True])
def test_closed_form_gradient_of_the_marginal_likelihood_is_autograds(constant_mean, known, missing):
    # the refinement ascends with the closed-form gradient of _condition(with_grad=True);
    # autograd through the Cholesky factor is the reference (4 particles: Matérn and RBF
    # alternate; a lengthscale, an outputscale and a noise beyond their clamps)
    g = torch.Generator().manual_seed(3)
    b, J, n, d = 2, 4, 25, 5
    head = GPHead(8, 6, particles=J).double()
    X = torch.rand(b, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(b, n, generator=g, dtype=torch.float64)
    observed = torch.ones(b, n, dtype=torch.float64)
    if missing:
        observed[0, -4:] = 0.0
        y[0, -4:] = 0.0
    noise = None
    if known:
        noise = 0.1 * torch.rand(b, n, generator=g, dtype=torch.float64)
        noise[:, ::2] = float("nan")
    theta = 0.7 * torch.randn(b, J, d + 2, generator=g, dtype=torch.float64)
    theta[0, 0, 0], theta[1, 1, d], theta[1, 2, d + 1] = 9.0, 5.0, -20.0  # clamped
    p = theta.clone().requires_grad_(True)
    lml = head._condition(p, X, y, observed, noise, constant_mean)[1]
    (expected,) = torch.autograd.grad(lml.sum(), p)
    with torch.no_grad():
        _, lml_cf, grad = head._condition(theta, X, y, observed, noise, constant_mean, with_grad=True)
    torch.testing.assert_close(lml_cf, lml.detach(), rtol=0.0, atol=0.0)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-9)
    assert float(grad[0, 0, 0]) == 0.0 and float(grad[1, 1, d]) == 0.0 and float(grad[1, 2, d + 1]) == 0.0
    # any other order of the kernels (e.g. compacted fits): the same slope function
    matern = torch.tensor([True, True, False, True]).view(1, -1, 1, 1)
    r2 = torch.rand(b, J, 6, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    k, slope = gp_head.unit_kernel_slope(r2, matern)
    torch.testing.assert_close(k, gp_head.unit_kernel(r2, matern))
    (auto,) = torch.autograd.grad(gp_head.unit_kernel(r2, matern).sum(), r2)
    torch.testing.assert_close(slope, auto)


def test_refinement_skips_small_contexts_and_ignores_the_batch():
    X, Y, Xq = _data(n=12, b=3)
    token = torch.randn(3, 8, dtype=torch.float64)
    head = _refining_head()
    Y_few = Y.clone()
    Y_few[1, :4] = float("nan")  # context 1: 8 observed targets, below the threshold
    fit = head.fit(token, X, Y_few, refine_steps=20, refine_min_context=10)
    plain = head.fit(token, X, Y_few)
    torch.testing.assert_close(fit.inv_lengthscale[1], plain.inv_lengthscale[1])
    assert not torch.allclose(fit.inv_lengthscale[0], plain.inv_lengthscale[0])
    # each context alone gives the same fit as in the batch (elementwise Adam)
    for i in range(3):
        alone = head.fit(token[i : i + 1], X[i : i + 1], Y_few[i : i + 1], 20, 10)
        for a, b in zip(head.predict(alone, Xq[i : i + 1]), head.predict(fit, Xq)):
            torch.testing.assert_close(a[0], b[i], atol=1e-10, rtol=1e-9)


def test_steps_per_ratio_stops_each_context_after_its_own_budget():
    # c = 2, d = 3, 30 steps: a context of m observed targets takes
    # min(30, max(5, ceil(2 m / 3))) steps: 12 targets -> 8, 8 (4 missing) -> 6, 6 -> 5
    X, Y, _ = _data(n=12, b=3)
    token = torch.randn(3, 8, dtype=torch.float64)
    head = _refining_head()
    Y_m = Y.clone()
    Y_m[1, :4] = float("nan")
    Y_m[2, :6] = float("nan")
    fit = head.fit(token, X, Y_m, refine_steps=30, refine_min_context=5, steps_per_ratio=2.0)
    for i, steps in enumerate([8, 6, 5]):
        sl = slice(i, i + 1)
        plain = head.fit(token[sl], X[sl], Y_m[sl], refine_steps=steps, refine_min_context=5)
        torch.testing.assert_close(fit.theta[i], plain.theta[0], rtol=1e-9, atol=1e-10)
        longer = head.fit(token[sl], X[sl], Y_m[sl], refine_steps=steps + 1, refine_min_context=5)
        assert not torch.allclose(fit.theta[i], longer.theta[0])
    # enough targets per dimension: the full refine_steps
    full = head.fit(token, X, Y, refine_steps=7, refine_min_context=5, steps_per_ratio=2.0)
    same = head.fit(token, X, Y, refine_steps=7, refine_min_context=5)
    torch.testing.assert_close(full.theta, same.theta, rtol=0.0, atol=0.0)
    # a warm start takes its own steps whatever the ratio
    warm = head.fit(token, X, Y, 3, 5, init_particles=fit.theta, steps_per_ratio=2.0)
    warm_plain = head.fit(token, X, Y, 3, 5, init_particles=fit.theta)
    torch.testing.assert_close(warm.theta, warm_plain.theta, rtol=0.0, atol=0.0)


def test_warm_tol_stops_stationary_warm_starts_per_context():
    # a warm start whose gradient per observation is below warm_tol keeps its particles
    # (Adam's first step would move each parameter by about its learning rate); the
    # others take their steps as without the tolerance; fresh fits ignore it
    X, Y, _ = _data(n=12, b=2)
    token = torch.randn(2, 8, dtype=torch.float64)
    head = _refining_head()
    converged = head.fit(token, X, Y, refine_steps=400, refine_min_context=5).theta
    proposed = head.fit(token, X, Y).theta
    start = torch.stack([converged[0], proposed[1]])  # context 0 stationary, 1 not

    def slope(theta):  # `b`: the largest |d lml / d theta| per observation
        with torch.no_grad():
            grad = head._condition(theta, X.double(), Y.squeeze(-1), torch.ones(2, 12),
                                   None, False, with_grad=True)[2]  # fmt: skip
        return (grad / 12.0).abs().amax((-2, -1))

    tol = float(slope(start)[0]) * 1.01
    assert float(slope(start)[1]) > 10 * tol
    warm = head.fit(token, X, Y, 6, 5, init_particles=start, warm_tol=tol)
    plain = head.fit(token, X, Y, 6, 5, init_particles=start)
    torch.testing.assert_close(warm.theta[0], start[0], rtol=0.0, atol=0.0)
    assert not torch.allclose(plain.theta[0], start[0])
    torch.testing.assert_close(warm.theta[1], plain.theta[1], rtol=1e-9, atol=1e-10)
    # every context stationary: no step at all; a fresh fit takes all its steps
    still = head.fit(token, X, Y, 6, 5, init_particles=start, warm_tol=1e6)
    torch.testing.assert_close(still.theta, start, rtol=0.0, atol=0.0)
    fresh = head.fit(token, X, Y, 6, 5, warm_tol=1e6)
    torch.testing.assert_close(fresh.theta, head.fit(token, X, Y, 6, 5).theta, rtol=0.0, atol=0.0)


def test_stationary_warm_start_reuses_the_checks_conditioning():
    # a warm start that stops at the stationarity check takes its fit from the check's
    # conditioning: the same fit as conditioning again (which it does where the context
    # needs gradients, e.g. MultivariatePFNModel's extended contexts), and gradients
    # still flow through the context there
    X, Y, _ = _data(n=12, b=2)
    Y[1, 3] = float("nan")  # a missing target: masked rows in both conditionings
    token = torch.randn(2, 8, dtype=torch.float64)
    head = _refining_head()
    start = head.fit(token, X, Y, refine_steps=400, refine_min_context=5).theta
    reused = head.fit(token, X, Y, 6, 5, init_particles=start, warm_tol=1e6)
    X_grad = X.clone().requires_grad_(True)
    again = head.fit(token, X_grad, Y, 6, 5, init_particles=start, warm_tol=1e6)
    for name in ("L", "alpha", "log_weights", "mean", "noise", "outputscale", "Z", "theta"):
        torch.testing.assert_close(getattr(reused, name), getattr(again, name).detach(),
                                   rtol=1e-12, atol=1e-12, msg=name)  # fmt: skip
    (g,) = torch.autograd.grad(again.alpha.sum(), X_grad)
    assert g.abs().sum() > 0


def test_warm_tol_is_a_recorded_inference_setting():
    net, base, on = _setting_net("gp_refine_warm_tol", 0.05, gp_refine_steps=30,
                                 gp_refine_min_context=5)  # fmt: skip
    X, Y, _ = _data(n=9, d=3, b=1)
    net.config = on
    first = net.encode_context(X[0].float(), Y[0].float()).gp_fit.theta
    net.config = on.replace(gp_refine_warm_tol=1e6)
    again = net.encode_context(X[0].float(), Y[0].float(), gp_init=first).gp_fit.theta
    torch.testing.assert_close(again, first, rtol=0.0, atol=0.0)


def _setting_net(name, value, num_features=4, **kw):
    r"""`(net, base, on)`: a tiny refining network, its config and the config with the
    inference setting `name = value`, checked to be recorded only while on, to leave the
    architecture alone and to reject a negative value."""
    net = random_pfn(num_features=num_features, emsize=16, nlayers=1, nhead=2, nhid=16,
                     gp_head=True, gp_particles=2, **kw)  # fmt: skip
    base = net.config
    on = base.replace(**{name: value})
    assert on.to_dict()[name] == value and name not in base.to_dict()
    assert on.architecture() == base.architecture()
    with pytest.raises(ValueError, match=name):
        base.replace(**{name: -1.0})
    return net, base, on


def test_steps_per_ratio_is_a_recorded_inference_setting():
    # 9 targets in 3 d at a ratio of 2: 6 steps
    net, base, early = _setting_net("gp_refine_steps_per_ratio", 2.0, gp_refine_steps=30,
                                    gp_refine_min_context=5)  # fmt: skip
    X, Y, _ = _data(n=9, d=3, b=1)

    def theta(config):
        net.config = config
        return net.encode_context(X[0].float(), Y[0].float()).gp_fit.theta

    torch.testing.assert_close(theta(early), theta(base.replace(gp_refine_steps=6)))
    assert not torch.allclose(theta(early), theta(base))


def test_min_noise_floors_the_particles_inferred_noise():
    # gp_min_noise bounds every particle's inferred noise below (as BoTorch's
    # GaussianLikelihood bounds its noise at 1e-4), refined or not; a known noise
    # (train_Yvar) is used as given, down to GP_MIN_NOISE
    X, Y, Xq = _data(n=12, b=2)
    token = torch.randn(2, 8, dtype=torch.float64)
    head = _refining_head()  # particle 1 proposes noise 1e-5
    for floor in (1e-6, 1e-4, 1e-2):
        for steps in (0, 20):
            fit = head.fit(token, X, Y, refine_steps=steps, refine_min_context=8,
                           min_noise=floor)  # fmt: skip
            assert float(fit.noise.detach().min()) >= floor * (1 - 1e-12)
        known = torch.zeros_like(Y)  # train_Yvar = 0
        fit = head.fit(token, X, Y, known_noise=known, min_noise=floor)
        torch.testing.assert_close(fit.noise, torch.full_like(fit.noise, gp_head.GP_MIN_NOISE))
    with pytest.raises(ValueError, match="gp_min_noise"):
        PFNTransformer(num_features=3, emsize=16, nlayers=1, nhead=2, nhid=16,
                       num_buckets=10, gp_head=True, gp_min_noise=0.0)  # fmt: skip
    net = random_pfn(num_features=4, emsize=16, nlayers=1, nhead=2, nhid=16,
                     gp_head=True, gp_particles=2, gp_min_noise=1e-3)  # fmt: skip
    assert net.config.to_dict()["gp_min_noise"] == 1e-3
    cache = net.encode_context(X[0].float(), Y[0].float())
    assert float(cache.gp_fit.noise.min()) >= 1e-3 * (1 - 1e-9)
    assert "gp_min_noise" not in net.config.replace(gp_min_noise=1e-6).to_dict()


def test_refinement_starts_per_dimension_below_the_min_context():
    # gp_refine_start_per_dim = 3: a d-dimensional context is refined from
    # max(5, 3 d) observed targets where that is below gp_refine_min_context (20)
    net, base, early = _setting_net("gp_refine_start_per_dim", 3.0, num_features=12,
                                    gp_refine_steps=5, gp_refine_min_context=20)  # fmt: skip

    def refined(config, n, d):
        X, Y, _ = _data(n=n, d=d, b=1)
        thetas = []
        for c in (config, config.replace(gp_refine_steps=0)):  # the proposals
            net.config = c
            thetas.append(net.encode_context(X[0].float(), Y[0].float()).gp_fit.theta)
        return not torch.allclose(*thetas)

    for n, d, expected in [(5, 1, True), (4, 1, False), (6, 2, True), (5, 2, False),
                           (12, 4, True), (11, 4, False), (20, 7, True), (19, 7, False)]:
        assert refined(early, n, d) == expected, (n, d)
        assert refined(base, n, d) == (n >= 20)
    with pytest.raises(ValueError, match="gp_refine_start_per_dim"):
        PFNTransformer(num_features=3, emsize=16, nlayers=1, nhead=2, nhid=16,
                       num_buckets=10, gp_head=True, gp_refine_start_per_dim=-1.0)  # fmt: skip


def test_refinement_runs_under_inference_mode_and_is_recorded_in_the_config():
    net = random_pfn(num_features=4, emsize=16, nlayers=1, nhead=2, nhid=16,
                     gp_head=True, gp_particles=2, gp_refine_steps=5,
                     gp_refine_min_context=4)  # fmt: skip
    assert net.config.gp_refine_steps == 5 and net.config.gp_refine_min_context == 4
    X, Y, Xq = _data(n=9, d=3, b=1)
    with torch.inference_mode():
        out = net.predict(Xq[0].float(), net.encode_context(X[0].float(), Y[0].float()))
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="gp_refine_steps"):
        PFNTransformer(num_features=3, emsize=16, nlayers=1, nhead=2, nhid=16,
                       num_buckets=10, gp_head=True, gp_refine_steps=-1)  # fmt: skip


def test_changing_the_refinement_refreshes_caches_and_the_float64_copy():
    from botorch_community.models.prior_fitted_network import PFNModel

    net = random_pfn(num_features=4, emsize=16, nlayers=1, nhead=2, nhid=16,
                     gp_head=True, gp_particles=2, gp_refine_steps=5,
                     gp_refine_min_context=4)  # fmt: skip
    with torch.no_grad():
        net.gp.mix.bias.fill_(2.0)  # mostly the GP part: the refinement shows
    X, Y, Xq = _data(n=9, d=3, b=1)
    model = PFNModel(X[0], Y[0], model=net)  # float64 data: a float64 copy of the net
    with model.cache_training_context():
        before = model.posterior(Xq[0]).mean
        net.set_gp_refinement(0)
        assert "gp_refine_steps" not in net.config.to_dict()
        off = model.posterior(Xq[0]).mean
        net.set_gp_refinement(5, 4)
        again = model.posterior(Xq[0]).mean
    assert net.config.gp_refine_steps == 5
    ref = PFNModel(X[0], Y[0], model=net, cache_context=False)
    net.set_gp_refinement(0)
    torch.testing.assert_close(off, ref.posterior(Xq[0]).mean)
    torch.testing.assert_close(before, again)
    assert (before - off).abs().max() > 1e-4
    with pytest.raises(ValueError, match="no GP head"):
        random_pfn(num_features=4, emsize=16, nlayers=1, nhead=2, nhid=16).set_gp_refinement(3)


def test_refinement_rows_keep_the_best_and_spread_the_rest():
    from botorch_community.pfn.gp_head import refinement_rows

    g = torch.Generator().manual_seed(0)
    X = torch.rand(2, 50, 3, generator=g, dtype=torch.float64)
    y = torch.randn(2, 50, generator=g, dtype=torch.float64)
    obs = torch.ones(2, 50, dtype=torch.float64)
    obs[1, ::2] = 0.0  # context 1: 25 observed rows
    Xs, ys, os = refinement_rows(X, y, obs, 12)
    assert Xs.shape == (2, 12, 3) and ys.shape == os.shape == (2, 12)
    assert bool((os == 1).all())  # enough observed rows in both contexts
    for i in range(2):
        top = torch.where(obs[i] > 0, y[i], float("-inf")).topk(3).values
        assert set(top.tolist()) <= set(ys[i].tolist())  # the best quarter is kept
        rows = {tuple(r) for r in X[i][obs[i] > 0].tolist()}
        assert all(tuple(r) in rows for r in Xs[i].tolist())  # only observed rows
    Xs2, _, _ = refinement_rows(X, y, obs, 12)
    assert torch.equal(Xs, Xs2)  # deterministic


def test_refinement_on_a_subset_costs_less_and_still_gains():
    X, Y, _ = _data(n=40, b=1)
    token = torch.randn(1, 8, dtype=torch.float64)
    head = _refining_head()
    full = head.fit(token, X, Y, refine_steps=20, refine_min_context=8)
    sub = head.fit(token, X, Y, refine_steps=20, refine_min_context=8, refine_max_rows=20)
    same = head.fit(token, X, Y, refine_steps=20, refine_min_context=8, refine_max_rows=40)
    proposed = head.fit(token, X, Y)
    torch.testing.assert_close(same.inv_lengthscale, full.inv_lengthscale)  # n <= max: all rows
    y = Y.squeeze(-1)

    def lml(fit):
        quad = (y.unsqueeze(1) * fit.alpha).sum(-1)
        return -0.5 * quad - fit.L.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    assert bool((lml(sub) > lml(proposed)).all())  # the subset's fit helps on all rows
    assert sub.L.shape[-1] == 40  # conditioned on every row


def test_known_noise_replaces_the_particles_noise():
    head = _head_with([[0.4] * 3, [0.4] * 3], [1.0, 1.0], [0.1, 0.3], d=3)  # noisy guesses
    X, Y, Xq = _data(n=10, b=1)
    token = torch.zeros(1, 8, dtype=torch.float64)
    zero = torch.zeros_like(Y)
    fit = head.fit(token, X, Y, known_noise=zero)  # noise-free: interpolates
    mu, var = head.predict(fit, X)
    torch.testing.assert_close(mu, Y.squeeze(-1).unsqueeze(1).expand_as(mu), atol=1e-4, rtol=0)
    assert float(var.max()) < 1e-4
    # unknown noise (NaN) is the particles' own, as without known noise
    unknown = head.fit(token, X, Y, known_noise=torch.full_like(Y, float("nan")))
    for a, b in zip(unknown.tensors(), head.fit(token, X, Y).tensors()):
        torch.testing.assert_close(a, b)
    # a known noise level is used for every particle and for new observations
    fit = head.fit(token, X, Y, known_noise=torch.full_like(Y, 0.02))
    torch.testing.assert_close(fit.noise, torch.full_like(fit.noise, 0.02))



def test_mixture_correlation_is_the_particle_mixtures_joint_covariance():
    r"""Against gpytorch's kernels: each particle's joint predictive covariance of noisy
    targets at q points, mixed with the particles' weights (law of total covariance)."""
    d, ls, os, noise, head = _reference_head()
    X, Y, Xq = _data(d=d)
    fit = head.fit(torch.zeros(2, 8, dtype=torch.float64), X, Y)
    R = head.mixture_correlation(fit, Xq)  # `b x q x q`
    w = fit.log_weights.exp()  # `b x J`
    mus, covs = [], []
    for j in range(2):
        K, ks, kqq = _reference_kernels(j, ls, os, noise, X, Xq)
        with torch.no_grad():
            mus.append((ks @ torch.linalg.solve(K, Y)).squeeze(-1))  # `b x q`
            covs.append(kqq - ks @ torch.linalg.solve(K, ks.transpose(-1, -2))
                        + noise[j] * torch.eye(5, dtype=torch.float64))  # fmt: skip
    m = sum(w[:, j, None] * mus[j] for j in range(2))
    C = sum(w[:, j, None, None] * (covs[j] + mus[j][..., None] * mus[j][..., None, :])
            for j in range(2)) - m[..., None] * m[..., None, :]  # fmt: skip
    sd = C.diagonal(dim1=-2, dim2=-1).sqrt()
    torch.testing.assert_close(R, C / (sd[..., None] * sd[..., None, :]), atol=1e-7, rtol=1e-6)
    # its diagonal is the variance of the marginal mixture that `predict` gives
    mu, var = head.predict(fit, Xq)
    var_mix = (w[..., None] * (var + mu.square())).sum(1) - (w[..., None] * mu).sum(1).square()
    torch.testing.assert_close(C.diagonal(dim1=-2, dim2=-1), var_mix, atol=1e-7, rtol=1e-6)


def test_negligible_particles_are_zeroed_per_context_and_dropped_when_unused():
    r"""At inference a particle far below its context's best weight gets weight zero;
    one unused by every context of the batch is not computed at all. Predictions equal
    those of the full mixture to round-off, alone or in a batch."""
    ls = [[0.3, 0.5, 0.8], [0.05, 0.05, 0.05]]  # particle 1: hopeless on this data
    head = _head_with(ls, [1.0, 1e-3], [1e-3, 1e-6], d=3).eval()
    X, Y, Xq = _data(d=3, n=12, b=2)
    token = torch.zeros(2, 8, dtype=torch.float64)
    fit = head.fit(token, X, Y)
    assert fit.log_weights.shape == (2, 1) and fit.L.shape[1] == 1  # dropped
    assert bool(fit.matern.reshape(-1)[0])  # the Matérn particle kept
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gp_head, "PRUNE_WEIGHT", 0.0)
        full = head.fit(token, X, Y)
    assert full.log_weights.shape == (2, 2) and float(full.log_weights[:, 1].max()) < math.log(1e-12)
    for a, b in zip(head.predict(fit, Xq), head.predict(full, Xq)):
        torch.testing.assert_close(a[:, 0], b[:, 0])
    borders = torch.linspace(-4, 4, 101, dtype=torch.float64)
    torch.testing.assert_close(head.mixture_log_probs(fit, Xq, borders),
                               head.mixture_log_probs(full, Xq, borders), atol=1e-9, rtol=0)
    # a batch where one context needs the particle: it stays, at weight 0 elsewhere
    Y2 = Y.clone()
    Y2[1] = torch.randn(12, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    both = head.fit(token, X, Y2)
    alone = head.fit(token[:1], X[:1], Y2[:1])
    if both.log_weights.shape[1] == 2:
        assert float(both.log_weights[0, 1]) == float("-inf")
    for a, b in zip(head.predict(alone, Xq[:1]), head.predict(both, Xq)):
        torch.testing.assert_close((a * alone.log_weights.exp().unsqueeze(-1)).sum(1)[0],
                                   (b * both.log_weights.exp().unsqueeze(-1)).sum(1)[0])
    # training never prunes (the loss trains every particle)
    assert head.train().fit(token, X, Y).log_weights.shape == (2, 2)
