#!/usr/bin/env python3
r"""Known observation noise (`noise_hint` networks, `PFNModel(train_Yvar=...)`)."""

import json

import pytest
import torch
from botorch.exceptions.errors import UnsupportedError
from botorch.models.transforms.input import Normalize
from botorch_community.models.prior_fitted_network import (
    MultivariatePFNModel,
    PFNModel,
)
from botorch_community.pfn import load_pretrained
from botorch_community.pfn.checkpoint import save_pretrained
from botorch_community.pfn.testing import random_pfn
from botorch_community.pfn.train import load_config, PriorSampler, train
from botorch_community.pfn.transformer import NOISE_HINT_MIN_VAR, PFNTransformer

FAST = ["train.border_samples=2000", "train.eval_datasets=4", "train.eval_every=0"]


VARIANTS = {"plain": {}, "metric": {"metric_attention": True},
            "metric+gp": {"metric_attention": True, "gp_head": True, "gp_particles": 2}}  # fmt: skip


@pytest.fixture(params=list(VARIANTS))
def net(request):
    return random_pfn(num_features=4, emsize=32, nlayers=2, nhead=2, nhid=48,
                      noise_hint=True, **VARIANTS[request.param])  # fmt: skip


def _data(n=10, d=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    Y = 5 + 3 * (2 * X).sin().sum(-1, keepdim=True)
    return X.to(dtype), Y.to(dtype)


# ---------------------------------------------------------------- the network
def test_zero_initialised_hint_is_an_exact_warm_start():
    plain = random_pfn(num_features=4, seed=3)
    grown = PFNTransformer(plain.config.replace(noise_hint=True), borders=plain.borders).eval()
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["noise_encoder.weight"] and not unexpected
    X, Y = _data(dtype=torch.float32)
    x = torch.rand(1, 5, 3)
    Yvar = torch.full((1, 10, 1), 0.01)
    a = plain(X[None], Y[None], x)
    b = grown(X[None], Y[None], x, train_Yvar=Yvar)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_unknown_noise_adds_nothing(net):
    X, Y = _data(dtype=torch.float32)
    x = torch.rand(1, 4, 3)
    without = net(X[None], Y[None], x)
    nan = torch.full((1, 10, 1), float("nan"))
    torch.testing.assert_close(net(X[None], Y[None], x, train_Yvar=nan), without, atol=0, rtol=0)
    known = net(X[None], Y[None], x, train_Yvar=torch.full((1, 10, 1), 1e-4))
    assert (known - without).abs().max() > 1e-3
    # variances below the floor are the floor (0 = noise-free)
    zero = net(X[None], Y[None], x, train_Yvar=torch.zeros(1, 10, 1))
    floor = net(X[None], Y[None], x, train_Yvar=torch.full((1, 10, 1), NOISE_HINT_MIN_VAR))
    torch.testing.assert_close(zero, floor, atol=0, rtol=0)


def test_hints_need_a_hint_network_and_matching_shapes(net):
    X, Y = _data(dtype=torch.float32)
    plain = random_pfn(num_features=4)
    with pytest.raises(ValueError, match="not trained with noise hints"):
        plain(X[None], Y[None], X[None], train_Yvar=torch.zeros(1, 10, 1))
    with pytest.raises(ValueError, match="shape of train_Y"):
        net(X[None], Y[None], X[None], train_Yvar=torch.zeros(1, 9, 1))


def test_cached_and_extended_contexts_carry_the_hints(net):
    X, Y = _data(dtype=torch.float64)
    net = net.double()
    Yvar = torch.rand(10, 1, dtype=torch.float64) * 0.1
    x = torch.rand(6, 3, dtype=torch.float64)
    ref = net(X[None], Y[None], x[None], train_Yvar=Yvar[None])[0]
    cached = net.predict(x, net.encode_context(X, Y, train_Yvar=Yvar))
    torch.testing.assert_close(cached, ref, atol=1e-10, rtol=0)
    # extend_context(8 shared rows + 2 extra rows) == encoding all 10 rows
    ext = net.extend_context(X[:8], Y[:8], X[None, 8:], Y[None, 8:], ctx_Yvar=Yvar[:8],
                             extra_Yvar=Yvar[None, 8:])
    torch.testing.assert_close(net.predict(x[None], ext)[0], ref, atol=1e-10, rtol=0)


# ------------------------------------------------------------------ the model
@pytest.mark.parametrize("ensemble_size", [1, 3])
@pytest.mark.parametrize("pending", [False, True])
def test_model_cached_equals_reference_with_hints(net, ensemble_size, pending):
    X, Y = _data()
    X5 = X * 5
    Yvar = torch.full_like(Y, 0.02)
    models = [
        PFNModel(X5, Y, model=net, train_Yvar=Yvar, ensemble_size=ensemble_size,
                 cache_context=c, input_transform=Normalize(3, bounds=torch.tensor([[0.0] * 3, [5.0] * 3])))
        for c in (True, False)
    ]  # fmt: skip
    assert models[0].uses_noise_hint
    pending_X = torch.rand(2, 3, dtype=torch.float64) * 5 if pending else None
    x = (torch.rand(4, 2, 3, dtype=torch.float64) * 5).requires_grad_(True)
    outs = []
    for m in models:
        post = m.posterior(x, pending_X=pending_X)
        (g,) = torch.autograd.grad(post.mean.sum(), x)
        outs.append((post.probabilities.detach(), g))
    atol = 1e-10 if models[0].network_dtype == torch.float64 else 1e-5  # its round-off
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=atol * a.abs().max().clamp_min(1), rtol=0)
    # the hint matters
    unhinted = PFNModel(X5, Y, model=net, ensemble_size=ensemble_size,
                        input_transform=Normalize(3, bounds=torch.tensor([[0.0] * 3, [5.0] * 3])))
    assert (unhinted.posterior(x.detach(), pending_X=pending_X).probabilities - outs[0][0]).abs().max() > 1e-6


def test_hints_are_in_units_of_train_Y(net):
    r"""Scaling the targets by `c` and the variances by `c^2` scales the predictive."""
    X, Y = _data()
    Yvar = torch.rand_like(Y) * 0.05
    x = torch.rand(5, 1, 3, dtype=torch.float64)
    a = PFNModel(X, Y, model=net, train_Yvar=Yvar).posterior(x)
    b = PFNModel(X, 7 * Y, model=net, train_Yvar=49 * Yvar).posterior(x)
    torch.testing.assert_close(b.probabilities, a.probabilities, atol=1e-10, rtol=0)
    torch.testing.assert_close(b.mean, 7 * a.mean, atol=1e-8, rtol=1e-8)


def test_changing_train_Yvar_refreshes_the_cache(net):
    X, Y = _data()
    m = PFNModel(X, Y, model=net, train_Yvar=torch.full_like(Y, 0.1))
    x = torch.rand(3, 1, 3, dtype=torch.float64)
    before = m.posterior(x).mean
    m.train_Yvar = torch.full_like(Y, 1e-5)
    after = m.posterior(x).mean
    fresh = PFNModel(X, Y, model=net, train_Yvar=torch.full_like(Y, 1e-5)).posterior(x).mean
    torch.testing.assert_close(after, fresh)
    assert (after - before).abs().max() > 1e-6 and m.num_encodings == 2


def test_network_without_hints_ignores_train_Yvar():
    plain = random_pfn(num_features=4)
    X, Y = _data()
    x = torch.rand(3, 1, 3, dtype=torch.float64)
    m = PFNModel(X, Y, model=plain, train_Yvar=torch.zeros_like(Y))
    assert not m.uses_noise_hint
    torch.testing.assert_close(m.posterior(x).probabilities,
                               PFNModel(X, Y, model=plain).posterior(x).probabilities)


def test_bad_train_Yvar(net):
    X, Y = _data()
    with pytest.raises(UnsupportedError, match="shape of train_Y"):
        PFNModel(X, Y, model=net, train_Yvar=torch.zeros(10))
    with pytest.raises(ValueError, match="non-negative"):
        PFNModel(X, Y, model=net, train_Yvar=-torch.ones_like(Y))
    with pytest.raises(ValueError, match="non-negative"):
        PFNModel(X, Y, model=net, train_Yvar=torch.full_like(Y, float("inf")))
    # NaN: unknown rows are fine
    Yvar = torch.zeros_like(Y)
    Yvar[3] = float("nan")
    PFNModel(X, Y, model=net, train_Yvar=Yvar).posterior(torch.rand(2, 3, dtype=torch.float64))


def test_condition_on_observations_extends_train_Yvar(net):
    X, Y = _data()
    Yvar = torch.full_like(Y, 0.01)
    m = PFNModel(X[:7], Y[:7], model=net, train_Yvar=Yvar[:7])
    m2 = m.condition_on_observations(X[7:], Y[7:])  # median of the known: 0.01
    m3 = m.condition_on_observations(X[7:], Y[7:], noise=torch.full((3, 1), 0.5))
    torch.testing.assert_close(m2.train_Yvar, Yvar)
    assert torch.equal(m3.train_Yvar[7:], torch.full((3, 1), 0.5, dtype=torch.float64))
    x = torch.rand(3, 3, dtype=torch.float64)
    full = PFNModel(X, Y, model=net, train_Yvar=Yvar)
    torch.testing.assert_close(m2.posterior(x).mean, full.posterior(x).mean)


def test_multivariate_with_hints_cached_equals_reference(net):
    X, Y = _data()
    Yvar = torch.full_like(Y, 1e-3)
    ms = [MultivariatePFNModel(X, Y, model=net, train_Yvar=Yvar, cache_context=c)
          for c in (True, False)]
    x = torch.rand(2, 3, 3, dtype=torch.float64)
    R = [m.posterior(x).correlation_matrix for m in ms]
    torch.testing.assert_close(R[0], R[1], atol=1e-8, rtol=0)
    plain_R = MultivariatePFNModel(X, Y, model=net).posterior(x).correlation_matrix
    assert (plain_R - R[0]).abs().max() > 1e-6


# ------------------------------------------------------------------- training
def test_sampler_reveals_the_noise_of_a_share_of_datasets():
    cfg = load_config("tiny", ["train.noise_hint_prob=0.5", "train.batch_size=400"])
    s = PriorSampler(cfg, torch.device("cpu"))
    (tx, ty, sx, sy), (mean, std), batch = s.sample(2, n=12)
    hint = s.noise_hints(2, batch, std, 12)
    assert hint.shape == (400, 12, 1)
    known = ~torch.isnan(hint[:, 0, 0])
    assert 0.4 < known.float().mean() < 0.6
    expected = batch.hypers.noise_var.view(-1, 1, 1) / std.double() ** 2
    torch.testing.assert_close(hint[known], expected.expand(400, 12, 1)[known].to(hint))
    # the data of a step do not depend on the hints (their own stream)
    (tx2, ty2, _, _), _, _ = s.sample(2, n=12)
    assert torch.equal(tx, tx2)
    assert torch.equal(s.noise_hints(2, batch, std, 12).isnan(), hint.isnan())


def test_warm_start_grows_noise_hints_and_trains_them(tmp_path):
    train("tiny", tmp_path / "a", steps=2, overrides=FAST, progress=False)
    src = load_pretrained(tmp_path / "a" / "model")
    over = FAST + [f"train.init_from={json.dumps(str(tmp_path / 'a' / 'model'))}",
                   "model.noise_hint=true", "train.noise_hint_prob=0.5",
                   "train.eval_every=3", "train.lr=1e-3"]  # fmt: skip
    train("tiny", tmp_path / "b", steps=3, overrides=over, progress=False)
    grown = load_pretrained(tmp_path / "b" / "model")
    assert grown.noise_hint and grown.config.noise_hint
    assert float(grown.noise_encoder.weight.detach().abs().max()) > 0  # it trained
    assert not src.noise_hint
    evals = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert any("mean_nll_hinted" in r.get("eval", {}) for r in evals)


def test_checkpoint_round_trip_keeps_hints(tmp_path, net):
    save_pretrained(net, tmp_path / "m")
    back = load_pretrained(tmp_path / "m")
    assert back.noise_hint
    torch.testing.assert_close(back.noise_encoder.weight, net.noise_encoder.weight)
