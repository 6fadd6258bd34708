#!/usr/bin/env python3
r"""Train a :class:`PFNTransformer` on the GP prior.

Usage::

    python -m botorch_community.pfn.train --config botorch_community/pfn/configs/tiny.json \
        --out runs/tiny [--steps N] [--max-minutes M] [--resume] [--set train.lr=1e-3]
    torchrun --nproc-per-node 2 -m botorch_community.pfn.train --config ... --out ...

Every step draws a fresh batch from the prior (:mod:`botorch_community.pfn.priors.gp`):
one context size `n ~ U{min_context..max_context}` and one input dimension per step, the
first `n` of `seq_len` rows as context and the rest as test rows, targets standardised
with :func:`~botorch_community.pfn.standardize.context_moments` (the one convention
shared with inference). A share of context targets is set to NaN (missing, as pending
points), which the Bayes predictive ignores. The loss is the bar-distribution NLL of the
test targets (:func:`~botorch_community.pfn.bar_distribution.bar_nll`) with borders
fitted on prior samples once at the start.

Optimisation: AdamW, linear warm-up then cosine decay, gradient clipping, bf16 autocast
on CUDA, DDP when launched by ``torchrun`` (``WORLD_SIZE > 1``; the global batch is split
across ranks, rank 0 writes). The batch of step `s` is a function of `(seed, s, rank)`
only, and the learning rate a function of `s`, so ``--resume`` continues the run exactly.

With ``train.budget_minutes`` (or ``--budget-minutes``) the schedule length is set from
the throughput measured over the first ``calibrate_steps`` steps so that the run
(possibly spread over several ``--resume`` invocations) takes about that much training
time; it is fixed then and stored.

Output directory:
    ``model.safetensors`` + ``model.json``: the network (see
    :func:`~botorch_community.pfn.checkpoint.save_pretrained`; float32);
    ``optimizer.pt``: optimizer state, plain tensors and dicts (``weights_only=True``);
    ``train_state.json``: the full config, step, schedule length, training time;
    ``metrics.jsonl``: one JSON record per log/eval line.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from botorch_community.pfn.bar_distribution import borders_from_samples
from botorch_community.pfn.checkpoint import (
    load_pretrained,
    read_checkpoint_config,
    save_pretrained,
)
from botorch_community.pfn.priors.gp import GPPriorConfig, sample_gp_prior
from botorch_community.pfn.standardize import context_moments
from botorch_community.pfn.config import GROWABLE, is_grown_parameter, PFNConfig
from botorch_community.pfn.cell_transformer import build_network
from botorch_community.pfn.transformer import PFNTransformer

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

DEFAULT_MODEL: dict[str, Any] = dict(
    num_features=18, emsize=256, nlayers=8, nhead=4, nhid=512, num_buckets=1000, dropout=0.0
)
DEFAULT_TRAIN: dict[str, Any] = dict(
    batch_size=512,  # global: split across DDP ranks
    seq_len=250,  # rows per dataset; n context rows, seq_len - n test rows
    min_context=0,
    max_context=200,
    # share of steps whose context size is drawn from U{large_context_min..max_context}
    # instead of U{min_context..max_context}: more training signal where interpolation
    # is hardest. It changes how often each n is seen, not the prior, so the Bayes
    # predictive the network approximates for each n is the same.
    large_context_share=0.0,
    large_context_min=50,
    steps=20000,  # schedule length (--steps overrides; budget_minutes sets it)
    budget_minutes=None,
    calibrate_steps=800,
    lr=5e-4,
    min_lr_ratio=0.01,
    warmup_steps=500,
    weight_decay=0.01,
    betas=[0.9, 0.999],
    grad_clip=1.0,
    amp=True,  # bf16 autocast on CUDA
    tf32=True,  # TF32 matmuls on CUDA where amp is off (or for ops autocast keeps in fp32)
    # metric attention in expanded form (PFNTransformer.metric_expanded): the same network
    # up to round-off, without the batch x rows x context x d squared differences
    metric_expanded=False,
    # warm start: a checkpoint path (or "default", the shipped network) whose weights and
    # bucket borders initialise the run (fresh optimizer and schedule); its architecture
    # must match the config's model section
    init_from=None,
    # learning-rate multiplier of the parameters a warm start adds (metric attention,
    # noise hints, GP head): they start switched off and must move far in a short fine-tune
    grown_lr_mult=1.0,
    # networks with ``noise_hint``: share of datasets whose noise variance is revealed to
    # the network (the rest train the unknown-noise predictive, as without hints)
    noise_hint_prob=0.0,
    # networks over cells (architecture "cells"): the batch of a step with inputs of
    # dimension d holds at most this many cells (datasets x seq_len x (d + 1)), capped
    # at batch_size, so steps of any d take about the same memory (None: batch_size)
    cells_per_batch=None,
    missing_prob=0.2,  # share of datasets with missing (NaN) context targets
    missing_share=0.5,  # in those, each target is missing w.p. U(0, missing_share)
    border_samples=500_000,
    seed=0,
    log_every=100,
    eval_every=1000,
    eval_datasets=128,
    eval_test_rows=50,
    eval_contexts=[0, 2, 5, 10, 20, 50, 100, 200],
    checkpoint_minutes=2.0,
    checkpoint_every=0,  # steps (0: time-based only)
)


# -------------------------------------------------------------------------- config
def load_config(
    config: Optional[Any] = None, overrides: Optional[list[str]] = None
) -> dict[str, Any]:
    r"""A full training config: defaults updated by a JSON file/dict and overrides.

    Args:
        config: A path to a JSON file, a config name in ``pfn/configs`` (e.g.
            ``"tiny"``), a dict ``{"model": ..., "prior": ..., "train": ...}``, or None.
        overrides: ``"section.key=value"`` strings, the value parsed as JSON when it can
            be (e.g. ``"train.batch_size=8"``, ``"prior.local_x_prob=0.1"``).

    Returns:
        ``{"model": ..., "prior": ..., "train": ...}`` with all defaults filled in.
    """
    if config is None:
        raw: dict[str, Any] = {}
    elif isinstance(config, dict):
        raw = copy.deepcopy(config)
    else:
        p = Path(config)
        if not p.exists() and (CONFIG_DIR / f"{config}.json").exists():
            p = CONFIG_DIR / f"{config}.json"
        raw = json.loads(p.read_text())
    unknown = sorted(set(raw) - {"model", "prior", "train", "description"})
    if unknown:
        raise ValueError(f"Unknown config section(s): {unknown}.")
    cfg = {
        "model": {**DEFAULT_MODEL, **raw.get("model", {})},
        "prior": dict(raw.get("prior", {})),
        "train": {**DEFAULT_TRAIN, **raw.get("train", {})},
    }
    if "description" in raw:
        cfg["description"] = raw["description"]
    for item in overrides or []:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in ("model", "prior", "train") or not name or not _:
            raise ValueError(f"Bad override {item!r}: use section.key=value.")
        try:
            cfg[section][name] = json.loads(value)
        except json.JSONDecodeError:
            cfg[section][name] = value
    unknown = sorted(set(cfg["train"]) - set(DEFAULT_TRAIN))
    if unknown:
        raise ValueError(f"Unknown train option(s): {unknown}.")
    cfg["prior"].setdefault("num_features", cfg["model"]["num_features"])
    cfg["prior"] = GPPriorConfig.from_dict(cfg["prior"]).to_dict()  # validates
    if cfg["prior"]["num_features"] != cfg["model"]["num_features"]:
        raise ValueError("prior.num_features must equal model.num_features.")
    t = cfg["train"]
    cfg["model"]["max_context"] = t["max_context"]
    cfg["model"] = PFNConfig.from_dict(cfg["model"]).to_dict()  # validates
    if not 0 <= t["min_context"] <= t["max_context"] < t["seq_len"]:
        raise ValueError("Need 0 <= min_context <= max_context < seq_len.")
    if not 0.0 <= t["large_context_share"] <= 1.0:
        raise ValueError(f"train.large_context_share must be in [0, 1], got {t['large_context_share']}.")
    if t["large_context_share"] > 0 and not (
        t["min_context"] <= t["large_context_min"] <= t["max_context"]
    ):
        raise ValueError("Need min_context <= large_context_min <= max_context.")
    return cfg


def lr_at(step: int, total: Optional[int], t: dict[str, Any]) -> float:
    r"""Learning rate of step `step`: linear warm-up, then cosine decay to
    ``min_lr_ratio * lr`` at ``total`` (held at ``lr`` while ``total`` is unknown)."""
    lr, warm = t["lr"], t["warmup_steps"]
    if step < warm:
        return lr * (step + 1) / warm
    if total is None:
        return lr
    progress = min(1.0, (step - warm) / max(1, total - warm))
    lo = lr * t["min_lr_ratio"]
    return lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


# -------------------------------------------------------------------------- data
def _step_seed(seed: int, step: int, stream: int) -> int:
    return (seed * 1_000_003 + step * 7919 + stream * 104_729 + 17) % (2**62)


class PriorSampler:
    r"""Draws standardised training batches; batch `step` depends on
    `(seed, step, rank)` only."""

    def __init__(self, cfg: dict[str, Any], device: torch.device, rank: int = 0, world: int = 1):
        self.t = cfg["train"]
        self.prior = GPPriorConfig.from_dict(cfg["prior"])
        self.device = device
        self.rank = rank
        if self.t["batch_size"] % world != 0:
            raise ValueError(
                f"batch_size {self.t['batch_size']} is not divisible by the {world} ranks."
            )
        self.local_batch = self.t["batch_size"] // world
        self.world = world
        self.cpu_g = torch.Generator()
        self.dev_g = torch.Generator(device=device)

    def shapes(self, step: int, stream: int = 0) -> tuple[int, int]:
        r"""Context size `n` and input dimension `d` of a step (same on all ranks)."""
        self.cpu_g.manual_seed(_step_seed(self.t["seed"], step, stream))
        lo = self.t["min_context"]
        share = self.t.get("large_context_share", 0.0)
        if share > 0 and float(torch.rand((), generator=self.cpu_g)) < share:
            lo = self.t["large_context_min"]
        n = int(torch.randint(lo, self.t["max_context"] + 1, (1,), generator=self.cpu_g))
        d = int(torch.randint(self.prior.min_dim, self.prior.max_dim + 1, (1,), generator=self.cpu_g))
        return n, d

    def batch_for(self, d: int) -> int:
        r"""This rank's number of datasets in a step of dimension `d` (see
        ``train.cells_per_batch``)."""
        cells = self.t.get("cells_per_batch")
        if not cells:
            return self.local_batch
        per_dataset = self.world * self.t["seq_len"] * (d + 1)
        return max(1, min(self.local_batch, cells // per_dataset))

    def sample(
        self,
        step: int,
        stream: int = 0,
        n: Optional[int] = None,
        batch_size: Optional[int] = None,
        seq_len: Optional[int] = None,
        missing: bool = True,
    ):
        r"""The batch of `step`: standardised `(train_X, train_Y, test_X, test_Y)`, the
        standardisation `(mean, std)`, and the raw :class:`GPPriorBatch`."""
        n0, d = self.shapes(step, stream)
        n = n0 if n is None else n
        L = seq_len or self.t["seq_len"]
        b = batch_size or self.batch_for(d)
        self.dev_g.manual_seed(_step_seed(self.t["seed"], step, stream) + 1 + self.rank)
        batch = sample_gp_prior(b, L, self.prior, dim=d, generator=self.dev_g)
        X, Y = batch.X, batch.Y
        train_X, train_Y, test_X, test_Y = X[:, :n], Y[:, :n], X[:, n:], Y[:, n:]
        if missing and self.t["missing_prob"] > 0 and n > 0:
            g = self.dev_g
            has = torch.rand(b, 1, 1, generator=g, device=g.device) < self.t["missing_prob"]
            share = torch.rand(b, 1, 1, generator=g, device=g.device) * self.t["missing_share"]
            miss = has & (torch.rand(b, n, 1, generator=g, device=g.device) < share)
            train_Y = torch.where(miss, torch.full_like(train_Y, float("nan")), train_Y)
        mean, std = context_moments(train_Y)
        data = (train_X, (train_Y - mean) / std, test_X, (test_Y - mean) / std)
        return data, (mean, std), batch

    def noise_hints(self, step: int, batch, std: Tensor, n: int, prob: Optional[float] = None) -> Tensor:
        r"""Known-noise hints of a batch (``noise_hint`` networks): each dataset's noise
        variance in standardised units (`noise_var / std^2`) on all its `n` context rows
        with probability `prob` (default ``train.noise_hint_prob``), else NaN (unknown).
        Drawn from their own stream, so the data of a step do not depend on it.

        Returns:
            `b x n x 1`.
        """
        p = self.t.get("noise_hint_prob", 0.0) if prob is None else prob
        var = batch.hypers.noise_var.view(-1, 1, 1).to(std) / std.square()  # `b x 1 x 1`
        b = var.shape[0]
        self.dev_g.manual_seed(_step_seed(self.t["seed"], step, 3) + 1 + self.rank)
        known = torch.rand(b, 1, 1, generator=self.dev_g, device=self.dev_g.device) < p
        hint = torch.where(known, var, torch.full_like(var, float("nan")))
        return hint.expand(b, n, 1)


def fit_borders(sampler: PriorSampler, num_buckets: int, num_samples: int) -> Tensor:
    r"""Bucket borders from standardised prior test targets (stream 1 of the seed)."""
    ys, count, i = [], 0, 0
    while count < num_samples:
        (_, _, _, test_Y), _, _ = sampler.sample(i, stream=1)
        ys.append(test_Y.reshape(-1).float())
        count += ys[-1].numel()
        i += 1
    y = torch.cat(ys)[:num_samples]
    return borders_from_samples(y, num_buckets).cpu()


class EvalSet:
    r"""A fixed validation set (stream 2 of the seed): for each context size `n`, a
    batch of datasets, standardised, with the oracle NLL (exact GP predictive with the
    true hyperparameters, in the standardised space) for reference."""

    def __init__(self, sampler: PriorSampler, t: dict[str, Any]):
        self.items = []
        for j, n in enumerate(c for c in t["eval_contexts"] if c <= t["max_context"]):
            (tx, ty, sx, sy), (mean, std), batch = sampler.sample(
                j, stream=2, n=n, batch_size=t["eval_datasets"],
                seq_len=n + t["eval_test_rows"], missing=False,
            )  # fmt: skip
            mu, var = batch.oracle_predictive(n)
            mu, var = (mu - mean.double()) / std.double(), var / std.double() ** 2
            y = sy.double()
            oracle = 0.5 * (math.log(2 * math.pi) + var.log() + (y - mu) ** 2 / var)
            hint = sampler.noise_hints(j, batch, std, n, prob=1.0)  # all known
            self.items.append((n, tx, ty, sx, sy, float(oracle.mean()), hint))

    @torch.no_grad()
    def evaluate(self, net: PFNTransformer) -> dict[str, Any]:
        was = net.training
        net.eval()
        out = {}
        for n, tx, ty, sx, sy, oracle, hint in self.items:
            nll = float(net(tx, ty, sx, test_Y=sy).mean())  # the bar NLL
            out[str(n)] = {"nll": round(nll, 4), "oracle": round(oracle, 4)}
            if net.noise_hint:  # the same datasets with their noise revealed
                nll = float(net(tx, ty, sx, train_Yvar=hint, test_Y=sy).mean())
                out[str(n)]["nll_hinted"] = round(nll, 4)
        net.train(was)
        cells = [out[str(item[0])] for item in self.items]
        out["mean_nll"] = round(sum(v["nll"] for v in cells) / len(cells), 4)
        out["mean_oracle"] = round(sum(v["oracle"] for v in cells) / len(cells), 4)
        if net.noise_hint:
            out["mean_nll_hinted"] = round(sum(v["nll_hinted"] for v in cells) / len(cells), 4)
        return out


# -------------------------------------------------------------------------- checkpoints
def _to_cpu(obj):
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def save_checkpoint(out: Path, net, opt, state: dict[str, Any]) -> None:
    r"""Write model (safetensors + JSON), optimizer (torch, plain tensors) and the
    train state (JSON, written last: it names the step the other files hold)."""
    out.mkdir(parents=True, exist_ok=True)
    step = state["step"]
    meta = {"step": step, "prior": state["config"]["prior"], "train": state["config"]["train"]}
    save_pretrained(net, out / "model", metadata=meta)
    tmp = out / "optimizer.pt.tmp"
    torch.save({"step": step, "optimizer": _to_cpu(opt.state_dict())}, tmp)
    os.replace(tmp, out / "optimizer.pt")
    _atomic_json(out / "train_state.json", state)


def load_checkpoint(out: Path, device: torch.device):
    r"""The network, optimizer state and train state of a run directory."""
    state_path = out / "train_state.json"
    if not state_path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint in {out} ({state_path} is missing).")
    state = json.loads(state_path.read_text())
    net = load_pretrained(out / "model", device=device)
    opt_state = torch.load(out / "optimizer.pt", map_location="cpu", weights_only=True)
    step_model = net.checkpoint_metadata.get("step")
    if not (opt_state["step"] == state["step"] == step_model):
        raise RuntimeError(
            f"Inconsistent checkpoint in {out}: train_state step {state['step']}, model "
            f"step {step_model}, optimizer step {opt_state['step']}."
        )
    return net, opt_state["optimizer"], state


# -------------------------------------------------------------------------- training
#: Architecture options a warm start may switch on in a network that lacks them.
def warm_start_network(
    source: str, model_cfg: dict[str, Any], device: torch.device
) -> PFNTransformer:
    r"""The network of checkpoint `source` (``"default"``: the shipped one) as the
    starting point of a run, in float32 on `device`, grown by the options of
    :data:`~botorch_community.pfn.config.GROWABLE` that `model_cfg` switches on and the
    source lacks (the added parts start switched off).

    Raises:
        ValueError: If its architecture differs from `model_cfg` otherwise (names each
            field).
    """
    net = load_pretrained(None if source == "default" else source, device=device).float()
    target = PFNConfig.from_dict(model_cfg)
    add = {k: True for k in GROWABLE if getattr(target, k) and not getattr(net.config, k)}
    if add.get("gp_head"):
        add["gp_particles"] = target.gp_particles
    grown_cfg = net.config.replace(**add)
    diff = {
        k: (v, grown_cfg.architecture().get(k))
        for k, v in target.architecture().items()
        if grown_cfg.architecture().get(k) != v
    }
    if diff:
        text = ", ".join(f"{k}: config {a!r} vs checkpoint {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"train.init_from={source!r} has a different architecture ({text}); set the "
            "config's model section to the checkpoint's architecture."
        )
    # the run's settings (dropout, max_context; refinement is an inference setting)
    grown = build_network(target, borders=net.borders.detach().clone()).to(device)
    missing, unexpected = grown.load_state_dict(net.state_dict(), strict=False)
    assert not unexpected and all(is_grown_parameter(k) for k in missing), missing
    grown.checkpoint_metadata = getattr(net, "checkpoint_metadata", {})
    return grown


def _make_optimizer(net: PFNTransformer, t: dict[str, Any], device: torch.device):
    decay, no_decay, grown = [], [], []
    for name, p in net.named_parameters():
        if is_grown_parameter(name):
            grown.append(p)
        else:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": t["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if grown:  # no decay: a gate or scale pulled to zero switches the part off
        groups.append(
            {"params": grown, "weight_decay": 0.0, "lr_mult": t.get("grown_lr_mult", 1.0)}
        )
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=t["lr"], betas=tuple(t["betas"]), **kw)


def _dist_setup():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return rank, world, device


def train(
    config: Optional[Any] = None,
    out: Any = "runs/pfn",
    *,
    resume: bool = False,
    steps: Optional[int] = None,
    max_minutes: Optional[float] = None,
    budget_minutes: Optional[float] = None,
    stop_at_step: Optional[int] = None,
    overrides: Optional[list[str]] = None,
    device: Optional[str] = None,
    progress: bool = True,
) -> dict[str, Any]:
    r"""Train (or resume) a PFN; see the module docstring. Returns the final train
    state (``step``, ``total_steps``, ``train_seconds``, ``last_loss``, ...)."""
    t_start = time.time()
    out = Path(out)
    rank, world, dist_device = _dist_setup()
    if dist_device is not None:
        dev = dist_device
    else:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    is_main = rank == 0

    if resume:
        net, opt_sd, state = load_checkpoint(out, dev)
        cfg = state["config"]
        if overrides:
            raise ValueError("--set cannot change the config of a resumed run.")
        if steps is not None and steps != state["total_steps"]:
            print(f"[train] changing the schedule length from {state['total_steps']} to {steps}")
            state["total_steps"] = steps
        net.train()
    else:
        cfg = load_config(config, overrides)
        if budget_minutes is not None:
            cfg["train"]["budget_minutes"] = budget_minutes
        total = steps if steps is not None else (
            None if cfg["train"]["budget_minutes"] else cfg["train"]["steps"]
        )
        state = {"config": cfg, "step": 0, "total_steps": total, "train_seconds": 0.0,
                 "runs": []}  # fmt: skip
        opt_sd = None
    t = cfg["train"]
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(t.get("tf32", True))
        torch.backends.cudnn.allow_tf32 = bool(t.get("tf32", True))
    sampler = PriorSampler(cfg, dev, rank, world)

    if not resume and t.get("init_from"):
        net = warm_start_network(t["init_from"], cfg["model"], dev)
        src = None if t["init_from"] == "default" else t["init_from"]
        meta0 = net.checkpoint_metadata or {}
        step0 = meta0.get("step", meta0.get("training", {}).get("steps"))
        state["init_from"] = {  # lineage: "default" moves when a new network ships
            "source": t["init_from"], "sha256": read_checkpoint_config(src).get("sha256"),
            "step": step0,
        }  # fmt: skip
        if is_main:
            print(f"[train] initialised from {t['init_from']} (its step {step0})", flush=True)
        net.train()
    elif not resume:
        torch.manual_seed(t["seed"])  # network initialisation
        if is_main:
            tb = time.time()
            borders = fit_borders(sampler, cfg["model"]["num_buckets"], t["border_samples"])
            print(f"[train] fitted {len(borders) - 1} bucket borders in {time.time() - tb:.1f}s "
                  f"(range {borders[0]:.2f} .. {borders[-1]:.2f})", flush=True)  # fmt: skip
        else:
            borders = torch.zeros(cfg["model"]["num_buckets"] + 1)
        if world > 1:
            import torch.distributed as dist

            b = borders.to(dev)
            dist.broadcast(b, 0)
            borders = b.cpu()
        net = build_network(PFNConfig.from_dict(cfg["model"]), borders=borders).to(dev)
        net.train()
    net.metric_expanded = bool(t.get("metric_expanded", False))
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # the GP head sits out steps with an empty context (n = 0): DDP must not wait
        # for its gradients then
        unused = net.gp_head
        model = DDP(net, device_ids=[dev.index] if dev.type == "cuda" else None,
                    find_unused_parameters=unused)
    opt = _make_optimizer(net, t, dev)
    if opt_sd is not None:
        opt.load_state_dict(opt_sd)
        for grp in opt.param_groups:  # the device may differ from the saving run's
            grp["fused"] = True if dev.type == "cuda" else None
            grp["foreach"] = None
    evalset = EvalSet(sampler, t) if is_main and t["eval_every"] else None
    nparams = sum(p.numel() for p in net.parameters())
    amp = bool(t["amp"]) and dev.type == "cuda"

    step = state["step"]
    run_info = {"start_step": step, "device": str(torch.cuda.get_device_name(dev)) if dev.type == "cuda" else "cpu",
                "world_size": world, "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    state["runs"].append(run_info)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    metrics_f = open(out / "metrics.jsonl", "a" if resume else "w") if is_main else None

    def log(rec: dict[str, Any]) -> None:
        if metrics_f is not None:
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()

    if is_main:
        print(f"[train] {nparams / 1e6:.2f}M parameters, device {run_info['device']} x{world}, "
              f"batch {t['batch_size']} x {t['seq_len']} rows, step {step}, schedule "
              f"{state['total_steps']}, amp {amp}", flush=True)  # fmt: skip

    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    pbar = tqdm(total=state["total_steps"], initial=step, disable=not (is_main and progress),
                mininterval=1.0 if interactive else 30.0, unit="step", dynamic_ncols=True)  # fmt: skip

    loss_acc = torch.zeros((), device=dev)
    acc_n = 0
    t_loop = time.time()
    train_seconds0 = state["train_seconds"]
    last_ckpt = time.time()
    calib_mark: Optional[tuple[int, float]] = None
    last_log = (step, time.time())
    last_loss = float("nan")
    stop_reason = "done"

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def stop_now() -> bool:
        flag = False
        if max_minutes is not None and time.time() - t_start > max_minutes * 60:
            flag = True
        if world > 1:
            import torch.distributed as dist

            ft = torch.tensor([float(flag)], device=dev)
            dist.broadcast(ft, 0)
            flag = bool(ft.item())
        return flag

    if step == 0 and evalset is not None:  # the starting point (matters for warm starts)
        rec = {"step": 0, "eval": evalset.evaluate(net)}
        log(rec)
        print(f"[train] step 0 eval {rec['eval']['mean_nll']:.4f} (oracle "
              f"{rec['eval']['mean_oracle']:.4f}, hinted "
              f"{rec['eval'].get('mean_nll_hinted', float('nan')):.4f})", flush=True)  # fmt: skip

    while state["total_steps"] is None or step < state["total_steps"]:
        if stop_at_step is not None and step >= stop_at_step:
            stop_reason = "stop_at_step"
            break
        if max_minutes is not None and step % 10 == 0 and stop_now():
            stop_reason = "max_minutes"
            break
        lr = lr_at(step, state["total_steps"], t)
        for grp in opt.param_groups:
            grp["lr"] = lr * grp.get("lr_mult", 1.0)
        (tx, ty, sx, sy), (_, std), batch = sampler.sample(step)
        hint = None
        if net.noise_hint and t.get("noise_hint_prob", 0.0) > 0:
            hint = sampler.noise_hints(step, batch, std, tx.shape[-2])
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            # the bar NLL of the test targets (the network computes it: a GP head then
            # evaluates its mixture at the target buckets only)
            loss = model(tx, ty, sx, train_Yvar=hint, test_Y=sy).float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(net.parameters(), t["grad_clip"])
        opt.step()
        loss_acc += loss.detach()
        acc_n += 1
        step += 1
        pbar.update(1)

        # schedule length from measured throughput
        if state["total_steps"] is None and t["budget_minutes"]:
            # time the second half of the calibration steps: the first steps run slow
            # (CUDA/cuBLAS warm-up, the allocator growing for each new context size)
            mark_step = t["calibrate_steps"] // 2
            if step == mark_step or (calib_mark is None and step > mark_step):
                sync()  # time from here (after the first, slow steps)
                calib_mark = (step, time.time())
            elif calib_mark is not None and step >= max(t["calibrate_steps"], calib_mark[0] + 5):
                sync()
                rate = (step - calib_mark[0]) / max(1e-9, time.time() - calib_mark[1])
                spent = train_seconds0 + time.time() - t_loop
                total = step + int(rate * max(0.0, t["budget_minutes"] * 60 - spent))
                total = max(total, step + 1, t["warmup_steps"] + 1)
                if world > 1:
                    import torch.distributed as dist

                    tt = torch.tensor([total], device=dev)
                    dist.broadcast(tt, 0)
                    total = int(tt.item())
                state["total_steps"] = total
                pbar.total = total
                pbar.refresh()
                if is_main:
                    print(f"[train] {rate:.2f} steps/s -> schedule of {total} steps "
                          f"(budget {t['budget_minutes']} min)", flush=True)  # fmt: skip

        if step % t["log_every"] == 0 or step == state["total_steps"]:
            last_loss = float(loss_acc) / max(1, acc_n)
            now = time.time()
            ds_s = (step - last_log[0]) * t["batch_size"] / max(1e-9, now - last_log[1])
            last_log = (step, now)
            loss_acc.zero_()
            acc_n = 0
            rec = {"step": step, "loss": round(last_loss, 4), "lr": lr, "datasets_per_s": round(ds_s, 1),
                   "train_seconds": round(train_seconds0 + now - t_loop, 1)}  # fmt: skip
            if evalset is not None and (step % t["eval_every"] == 0 or step == state["total_steps"]):
                rec["eval"] = evalset.evaluate(net)
            log(rec)
            pbar.set_postfix(loss=f"{last_loss:.4f}", ds_s=f"{ds_s:.0f}", lr=f"{lr:.2e}")
            if is_main and not interactive:
                ev = f" eval {rec['eval']['mean_nll']:.4f} (oracle {rec['eval']['mean_oracle']:.4f})" if "eval" in rec else ""
                if "mean_nll_hinted" in rec.get("eval", {}):
                    ev += f" hinted {rec['eval']['mean_nll_hinted']:.4f}"
                pbar.write(f"step {step}/{state['total_steps']} loss {last_loss:.4f} lr {lr:.2e} "
                           f"{ds_s:.0f} datasets/s{ev}")  # fmt: skip
        due = (t["checkpoint_every"] and step % t["checkpoint_every"] == 0) or (
            t["checkpoint_minutes"] and time.time() - last_ckpt > t["checkpoint_minutes"] * 60
        )
        if due and is_main:
            state["step"] = step
            state["train_seconds"] = train_seconds0 + time.time() - t_loop
            save_checkpoint(out, net, opt, state)
            last_ckpt = time.time()
    pbar.close()
    if acc_n:
        last_loss = float(loss_acc) / acc_n
    state["step"] = step
    state["train_seconds"] = train_seconds0 + time.time() - t_loop
    state["last_loss"] = last_loss
    run_info.update(end_step=step, stop_reason=stop_reason,
                    seconds=round(time.time() - t_start, 1))  # fmt: skip
    if dev.type == "cuda":
        run_info["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    if is_main:
        save_checkpoint(out, net, opt, state)
        log({"step": step, "end": stop_reason, "train_seconds": round(state["train_seconds"], 1)})
        if dev.type == "cuda":
            print(f"[train] peak GPU memory {run_info['peak_gpu_memory_gb']} GiB", flush=True)
        print(f"[train] stopped ({stop_reason}) at step {step}/{state['total_steps']}, "
              f"{state['train_seconds'] / 60:.1f} min of training in total, last loss "
              f"{last_loss:.4f}; checkpoint in {out}", flush=True)  # fmt: skip
        metrics_f.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return state


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m botorch_community.pfn.train", description="Train a PFN on the GP prior."
    )
    ap.add_argument("--config", help="JSON config file or a name in pfn/configs (tiny, default)")
    ap.add_argument("--out", required=True, help="output/checkpoint directory")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out")
    ap.add_argument("--max-minutes", type=float, help="stop cleanly (and checkpoint) after this wall time")
    ap.add_argument("--steps", type=int, help="schedule length (total optimizer steps)")
    ap.add_argument("--budget-minutes", type=float,
                    help="set the schedule length from measured throughput to train this long in total")
    ap.add_argument("--stop-at-step", type=int, help="stop cleanly (and checkpoint) at this step")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value (JSON), e.g. train.batch_size=64")
    ap.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    a = ap.parse_args(argv)
    if not a.resume and not a.config:
        ap.error("--config is required unless --resume")
    train(a.config, a.out, resume=a.resume, steps=a.steps, max_minutes=a.max_minutes,
          budget_minutes=a.budget_minutes, stop_at_step=a.stop_at_step, overrides=a.set,
          device=a.device, progress=not a.no_progress)  # fmt: skip


if __name__ == "__main__":
    main()
