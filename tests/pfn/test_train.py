#!/usr/bin/env python3
r"""The training pipeline on CPU: tiny config, learning, exact resume, clean stops."""

import json
import re

import pytest
import torch
from botorch_community.pfn import load_pretrained
from botorch_community.pfn.bar_distribution import bar_nll
from botorch_community.pfn.priors.gp import GPPriorConfig
from botorch_community.pfn.train import CONFIG_DIR, load_config, lr_at, main, PriorSampler, train
from botorch_community.pfn.cell_transformer import build_network
from botorch_community.pfn.transformer import PFNTransformer

FAST = ["train.border_samples=2000", "train.eval_datasets=4", "train.eval_every=0"]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_config_trains_via_cli(tmp_path, capsys):
    out = tmp_path / "run"
    main(["--config", "tiny", "--out", str(out), "--steps", "4", "--no-progress",
          "--set", "train.border_samples=2000", "--set", "train.eval_every=2"])  # fmt: skip
    for f in ("model.safetensors", "model.json", "optimizer.pt", "train_state.json"):
        assert (out / f).exists(), f
    state = json.loads((out / "train_state.json").read_text())
    assert state["step"] == 4 and state["total_steps"] == 4
    net = load_pretrained(out / "model")
    assert net.config.max_context == 16 and not net.training
    assert net.checkpoint_metadata["step"] == 4
    opt = torch.load(out / "optimizer.pt", weights_only=True)  # plain tensors and dicts
    assert opt["step"] == 4 and opt["optimizer"]["state"]
    assert any("eval" in r for r in _metrics(out))
    assert "stopped (done) at step 4/4" in capsys.readouterr().out


def test_loss_decreases_on_a_trivial_setting(tmp_path):
    # n is 0 or 1; near-constant functions (huge lengthscales, tiny noise): with no
    # context the targets are raw (outputscale 4), with one they are y - y_1, tiny. The
    # network only has to learn whether a context row is present.
    over = FAST + ["prior.max_dim=1", "train.max_context=1", "train.seq_len=12",
                   "train.batch_size=64", "train.lr=3e-3", "train.warmup_steps=3",
                   "train.missing_prob=0", "prior.noise_weights=[0,1,0]",
                   "prior.lengthscale_gamma_prob=0", "prior.lengthscale_lognormal=[3.0,0.0]",
                   "prior.outputscale_gamma_prob=0", "prior.outputscale_lognormal=[1.4,0.0]",
                   "prior.warp_prob=0", "prior.linear_mean_prob=0"]  # fmt: skip
    train("tiny", tmp_path, steps=30, stop_at_step=0, overrides=over, progress=False)
    net0 = load_pretrained(tmp_path / "model")
    train(None, tmp_path, resume=True, progress=False)
    net1 = load_pretrained(tmp_path / "model")
    cfg = json.loads((tmp_path / "train_state.json").read_text())["config"]
    sampler = PriorSampler(cfg, torch.device("cpu"))
    before, after = [], []
    for n in (0, 1):
        (tx, ty, sx, sy), _, _ = sampler.sample(0, stream=9, n=n, batch_size=128)
        with torch.no_grad():
            before.append(float(bar_nll(net0(tx, ty, sx), sy, net0.borders).mean()))
            after.append(float(bar_nll(net1(tx, ty, sx), sy, net1.borders).mean()))
    assert sum(after) < sum(before) - 0.6, (before, after)  # measured: 2.74 -> 1.71


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train("tiny", a, steps=6, overrides=FAST, progress=False)
    train("tiny", b, steps=6, overrides=FAST, progress=False, stop_at_step=3)
    assert json.loads((b / "train_state.json").read_text())["step"] == 3
    train(None, b, resume=True, progress=False)
    wa, wb = load_pretrained(a / "model"), load_pretrained(b / "model")
    for (k, x), (_, y) in zip(wa.state_dict().items(), wb.state_dict().items()):
        assert torch.equal(x, y), k
    oa = torch.load(a / "optimizer.pt", weights_only=True)["optimizer"]
    ob = torch.load(b / "optimizer.pt", weights_only=True)["optimizer"]
    for i, s in oa["state"].items():
        for k, v in s.items():
            assert torch.equal(v, ob["state"][i][k]), (i, k)
    sa = json.loads((a / "train_state.json").read_text())
    sb = json.loads((b / "train_state.json").read_text())
    assert sa["step"] == sb["step"] == 6 and sa["config"] == sb["config"]
    assert [r["stop_reason"] for r in sb["runs"]] == ["stop_at_step", "done"]


def test_max_minutes_stops_cleanly_and_budget_sets_schedule(tmp_path):
    state = train("tiny", tmp_path / "m", max_minutes=0.0, overrides=FAST, progress=False)
    assert state["step"] == 0 and state["runs"][-1]["stop_reason"] == "max_minutes"
    assert (tmp_path / "m" / "model.safetensors").exists()
    state = train(None, tmp_path / "m", resume=True, steps=2, progress=False)
    assert state["step"] == 2
    # a time budget fixes the schedule length after the calibration steps
    over = FAST + ["train.calibrate_steps=4"]
    state = train("tiny", tmp_path / "c", budget_minutes=0.01, overrides=over, progress=False)
    assert state["total_steps"] is not None and state["step"] == state["total_steps"] >= 4


def test_schedule_and_config():
    t = load_config("tiny")["train"]
    t.update(lr=1.0, warmup_steps=4, min_lr_ratio=0.0)
    assert [lr_at(s, 12, t) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 12, t) == 1.0 and abs(lr_at(8, 12, t) - 0.5) < 1e-12
    assert lr_at(12, 12, t) == 0.0 and lr_at(100, None, t) == 1.0
    cfg = load_config("default")
    assert cfg["model"]["num_features"] == 18 and cfg["model"]["max_context"] == 200
    assert cfg["model"]["num_buckets"] == 1000 and cfg["prior"]["num_features"] == 18
    with pytest.raises(ValueError, match="Unknown train"):
        load_config("tiny", ["train.nope=1"])
    with pytest.raises(ValueError):
        load_config("tiny", ["train.max_context=40"])  # >= seq_len


def test_batches_are_standardised_by_context_moments():
    cfg = load_config("tiny", ["train.missing_prob=1.0", "train.missing_share=0.5"])
    s = PriorSampler(cfg, torch.device("cpu"))
    (tx, ty, sx, sy), (mean, std), batch = s.sample(3, n=10)
    assert tx.shape[1] == 10 and sx.shape[1] == cfg["train"]["seq_len"] - 10
    obs = ~torch.isnan(ty)
    assert bool(torch.isnan(ty).any())  # some context targets missing
    # observed context targets have mean 0 / std 1 per dataset
    m = torch.where(obs, ty, 0).sum(1) / obs.sum(1)
    torch.testing.assert_close(m, torch.zeros_like(m), atol=1e-5, rtol=0)
    torch.testing.assert_close(sy, (batch.Y[:, 10:] - mean) / std)
    # the same step gives the same batch
    (tx2, ty2, _, _), _, _ = s.sample(3, n=10)
    assert torch.equal(tx, tx2) and torch.equal(torch.nan_to_num(ty), torch.nan_to_num(ty2))


def test_warm_start_copies_weights_and_borders_and_checks_architecture(tmp_path):
    train("tiny", tmp_path / "a", steps=2, overrides=FAST, progress=False)
    src = load_pretrained(tmp_path / "a" / "model")
    # a warm start at lr 0 keeps the weights and the borders exactly
    over = FAST + [f"train.init_from={json.dumps(str(tmp_path / 'a' / 'model'))}",
                   "train.lr=0", "train.min_lr_ratio=1", "train.seed=5"]  # fmt: skip
    state = train("tiny", tmp_path / "b", steps=2, overrides=over, progress=False)
    assert state["step"] == 2
    warm = load_pretrained(tmp_path / "b" / "model")
    assert torch.equal(warm.borders, src.borders)
    for (k, v), (k2, v2) in zip(src.state_dict().items(), warm.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    # a different architecture is refused with the differing field named
    bad = over + ["model.emsize=48"]
    with pytest.raises(ValueError, match="emsize: config 48 vs checkpoint"):
        train("tiny", tmp_path / "c", steps=1, overrides=bad, progress=False)


def test_large_context_share_shifts_context_sizes():
    cfg = load_config("tiny", ["train.large_context_share=1.0", "train.large_context_min=12"])
    sampler = PriorSampler(cfg, torch.device("cpu"))
    ns = [sampler.shapes(s)[0] for s in range(200)]
    assert min(ns) >= 12 and max(ns) == cfg["train"]["max_context"]
    cfg = load_config("tiny", ["train.large_context_share=0.5", "train.large_context_min=12"])
    sampler = PriorSampler(cfg, torch.device("cpu"))
    ns = [sampler.shapes(s)[0] for s in range(400)]
    assert min(ns) < 12 and 0.5 < sum(n >= 12 for n in ns) / len(ns) < 0.85
    with pytest.raises(ValueError, match="large_context_share"):
        load_config("tiny", ["train.large_context_share=1.5"])


def test_warm_start_grows_a_plain_network_into_metric_attention(tmp_path):
    train("tiny", tmp_path / "a", steps=2, overrides=FAST, progress=False)
    src = load_pretrained(tmp_path / "a" / "model")
    over = FAST + [f"train.init_from={json.dumps(str(tmp_path / 'a' / 'model'))}",
                   "model.metric_attention=true", "train.grown_lr_mult=50",
                   "train.lr=0", "train.min_lr_ratio=1"]  # fmt: skip
    train("tiny", tmp_path / "b", steps=2, overrides=over, progress=False)
    grown = load_pretrained(tmp_path / "b" / "model")
    assert grown.config.metric_attention and grown.metric_attention
    g = torch.Generator().manual_seed(0)
    tX, tY, X = torch.rand(7, 3, generator=g), torch.randn(7, 1, generator=g), torch.rand(5, 3, generator=g)
    # at lr 0 the gates stay zero: the grown network predicts what its source did
    torch.testing.assert_close(
        grown.predict(X, grown.encode_context(tX, tY)),
        src.predict(X, src.encode_context(tX, tY)), atol=1e-6, rtol=0,
    )  # fmt: skip
    # with a learning rate the metric parameters train, in their own (faster) group
    over2 = over[:-2] + ["train.lr=1e-3"]
    train("tiny", tmp_path / "c", steps=3, overrides=over2, progress=False)
    opt = torch.load(tmp_path / "c" / "optimizer.pt", weights_only=True)["optimizer"]
    assert [grp.get("lr_mult", 1.0) for grp in opt["param_groups"]] == [1.0, 1.0, 50.0]
    moved = load_pretrained(tmp_path / "c" / "model")
    assert any(float(layer.metric_gate.abs().max()) > 0 for layer in moved.layers)


@pytest.mark.parametrize(
    "part, overrides",
    [("noise_hint", ["model.noise_hint=true", "train.noise_hint_prob=1.0"]),
     ("gp_head", ["model.gp_head=true", "model.gp_particles=2"])],
)  # fmt: skip
def test_warm_start_grows_a_part(tmp_path, part, overrides):
    train("tiny", tmp_path / "a", steps=2, overrides=FAST, progress=False)
    over = FAST + [f"train.init_from={json.dumps(str(tmp_path / 'a' / 'model'))}",
                   "train.grown_lr_mult=50", "train.lr=1e-3", *overrides]  # fmt: skip
    train("tiny", tmp_path / "b", steps=3, overrides=over, progress=False)
    grown = load_pretrained(tmp_path / "b" / "model")
    assert getattr(grown.config, part) and getattr(grown, part)
    opt = torch.load(tmp_path / "b" / "optimizer.pt", weights_only=True)["optimizer"]
    assert [grp.get("lr_mult", 1.0) for grp in opt["param_groups"]] == [1.0, 1.0, 50.0]
    head = grown.noise_encoder.weight if part == "noise_hint" else grown.gp.hyper.weight
    assert float(head.detach().abs().max()) > 0  # it trained
    if part == "gp_head":
        assert grown.config.gp_particles == 2
    g = torch.Generator().manual_seed(0)
    tX, tY, X = torch.rand(7, 3, generator=g), torch.randn(7, 1, generator=g), torch.rand(5, 3, generator=g)
    out = grown.predict(X, grown.encode_context(tX, tY))
    torch.testing.assert_close(out, grown(tX[None], tY[None], X[None])[0], atol=1e-5, rtol=0)


LINEAGE = set(re.findall(r"`(\w+)\.json`", (CONFIG_DIR / "README.md").read_text()))


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in CONFIG_DIR.glob("*.json")), ids=lambda n: n
)
def test_shipped_configs_are_valid(name):
    # every config in the package loads with its prior and builds its architecture
    cfg = load_config(name)
    prior = GPPriorConfig.from_dict(cfg["prior"])
    assert prior.num_features == cfg["model"]["num_features"]
    model_cfg = {**cfg["model"], "emsize": 8, "nhid": 8, "nlayers": 1, "nhead": 2,
                 "num_buckets": 10}  # the options, not the size
    build_network(**model_cfg)
    assert name in LINEAGE, f"configs/{name}.json is not in configs/README.md's lineage"
