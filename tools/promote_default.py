#!/usr/bin/env python3
r"""Ship a trained checkpoint as the package's default network (float16 weights), with the
metadata of the current default extended by one training stage.

Usage::

    PYTHONPATH=$PWD .venv/bin/python tools/promote_default.py runs/default_gp/model \
        --stage '{"stage": "fine-tune 7", "config": "configs/default_gp.json", ...}' \
        [--config-set gp_refine_steps=30] [--description TEXT] [--name default_highd] \
        [--from-scratch]

The stage record gets the run's step count and training seconds (from the checkpoint's
``train_state.json`` next to it) unless given; the totals are updated. ``--config-set``
changes inference settings of the architecture config that are not weights (e.g.
``gp_refine_steps=30``); the weights must still load strictly. It overwrites
``botorch_community/pfn/weights/default.*`` (with ``--name default_highd``, the
high-dimensional network ``default_highd.*``): update ``MODEL_CARD.md`` and the benchmark
results (``benchmarks/RESULTS.md``) with it.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from botorch_community.pfn.checkpoint import load_pretrained, save_pretrained
from botorch_community.pfn.networks import BUILTIN_NETWORKS
from botorch_community.pfn.cell_transformer import build_network


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="stem of the checkpoint to ship (e.g. runs/x/model)")
    p.add_argument("--stage", required=True, help="JSON record of the new training stage")
    p.add_argument("--description", default=None, help="new metadata description")
    p.add_argument("--config-set", action="append", default=[], metavar="KEY=VALUE",
                   help="set an architecture config value (JSON), e.g. gp_refine_steps=30")
    p.add_argument("--from-scratch", action="store_true",
                   help="the checkpoint was trained from scratch, not from the shipped "
                   "network: its stage starts a new lineage (the old description is kept "
                   "unless --description is given)")
    p.add_argument("--name", default="default", choices=sorted(BUILTIN_NETWORKS),
                   help="which shipped network to replace (default_highd: the one for d > 18)")
    args = p.parse_args()

    target = BUILTIN_NETWORKS[args.name]
    meta = {}  # the first network of this name (or one from scratch): its lineage starts here
    if target.with_suffix(".safetensors").exists():
        meta = copy.deepcopy(load_pretrained(target).checkpoint_metadata)
        if args.from_scratch:
            meta = {k: v for k, v in meta.items() if k == "description"}
    net = load_pretrained(args.checkpoint)
    run_meta = net.checkpoint_metadata
    if args.config_set:
        changes = {}
        for item in args.config_set:
            key, value = item.split("=", 1)
            changes[key] = json.loads(value)
        rebuilt = build_network(net.config.replace(**changes), borders=net.borders)
        rebuilt.load_state_dict(net.state_dict())  # strict: settings only, no weights
        net = rebuilt
    stage = json.loads(args.stage)
    state_path = Path(args.checkpoint).parent / "train_state.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        stage.setdefault("steps", state["step"])
        stage.setdefault("train_seconds", round(state["train_seconds"], 1))
        stage.setdefault("runs", state.get("runs", []))
    training = meta.setdefault("training", {"steps": 0, "train_seconds": 0.0, "stages": []})
    training["stages"].append(stage)
    training["steps"] = training["steps"] + int(stage["steps"])
    training["train_seconds"] = round(training["train_seconds"] + float(stage["train_seconds"]), 1)
    meta["train"] = run_meta.get("train", meta.get("train"))
    meta["prior"] = run_meta.get("prior", meta.get("prior"))
    if args.description:
        meta["description"] = args.description
    save_pretrained(net, target, dtype=torch.float16, metadata=meta)
    back = load_pretrained(target)
    print(f"shipped {args.checkpoint} as {args.name}: {training['steps']} steps, "
          f"{training['train_seconds'] / 60:.1f} min of training, sha256 "
          f"{json.loads(target.with_suffix('.json').read_text())['sha256'][:12]}, "
          f"config {back.config}")


if __name__ == "__main__":
    main()
