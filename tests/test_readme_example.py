#!/usr/bin/env python3
r"""The README's example runs as written (a warm-started BO loop on the shipped network)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_finds_the_optimum():
    code = re.search(r"## Example\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 (our own README)
    assert scope["train_Y"].shape == (30, 1)
    assert float(scope["train_Y"].max()) > -0.05  # the optimum is 0 at (2, 2)
    assert scope["model"].fitted_particles is not None  # the loop warm-started
