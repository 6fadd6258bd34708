#!/usr/bin/env python3
r"""Input symmetries of the GP prior, for test-time ensembles of a PFN.

The GP prior (:mod:`botorch_community.pfn.priors.gp`) draws every input dimension's
hyperparameters independently from the same hyperpriors, and its kernels are stationary,
so the prior over functions on `[0, 1]^d` is (up to the small asymmetry of its input
warping) unchanged by

- permuting the input dimensions, and
- reflecting any subset of them, `x_j -> 1 - x_j`.

The Bayes-optimal predictive is then unchanged by applying one such map `T` to the
training and the test inputs alike, while a trained network is only approximately
invariant. Averaging the network's predictive densities over several maps,

.. math::

    p(y \mid x, D) \approx \frac{1}{E} \sum_{e=1}^{E}
    q_\theta\big(y \mid T_e x, \{(T_e x_i, y_i)\}\big),

cancels part of its error. All members share the bucket borders (targets are not
transformed), so the average is again a bar distribution: its bucket probabilities are
the members' averaged probabilities.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

#: Seed of the generator that draws the members beyond the identity (fixed, so a model's
#: predictive is reproducible).
SYMMETRY_SEED = 20251123


def num_input_symmetries(d: int) -> int:
    r"""Number of distinct maps of `[0, 1]^d`: `d!` permutations times `2^d` reflections."""
    return math.factorial(d) * 2**d


def input_symmetries(d: int, num: int) -> tuple[Tensor, Tensor]:
    r"""`num` distinct input maps, the identity first, the rest drawn at random.

    Args:
        d: Input dimension.
        num: Number of maps, `1 <= num <= num_input_symmetries(d)`.

    Returns:
        `perms` (`num x d` long: member `e` reads input dimension `perms[e, j]` as its
        dimension `j`) and `flips` (`num x d` bool: member `e` reflects its dimension
        `j` when `flips[e, j]`).
    """
    total = num_input_symmetries(d)
    if not 1 <= num <= total:
        raise ValueError(
            f"num must be between 1 and {total} (the number of distinct input maps for "
            f"d={d}), got {num}."
        )
    if num == 1:  # the identity alone (every plain model asks for this)
        chosen = [(tuple(range(d)), (False,) * d)]
    elif total <= 4096:  # small d: enumerate, then take a random subset
        maps = [
            (perm, flips)
            for perm in itertools.permutations(range(d))
            for flips in itertools.product((False, True), repeat=d)
        ]
        g = torch.Generator().manual_seed(SYMMETRY_SEED)
        order = 1 + torch.randperm(total - 1, generator=g)[: num - 1]  # skip the identity
        chosen = [maps[0]] + [maps[i] for i in order.tolist()]
    else:  # rejection sampling of distinct maps (collisions are rare here)
        g = torch.Generator().manual_seed(SYMMETRY_SEED)
        chosen, seen = [(tuple(range(d)), (False,) * d)], set()
        seen.add(chosen[0])
        while len(chosen) < num:
            perm = tuple(torch.randperm(d, generator=g).tolist())
            flips = tuple((torch.rand(d, generator=g) < 0.5).tolist())
            if (perm, flips) not in seen:
                seen.add((perm, flips))
                chosen.append((perm, flips))
    perms = torch.tensor([p for p, _ in chosen], dtype=torch.long)
    flips = torch.tensor([f for _, f in chosen], dtype=torch.bool)
    return perms, flips


def apply_input_symmetries(X: Tensor, perms: Tensor, flips: Tensor) -> Tensor:
    r"""Every map applied to `X`, stacked along a new leading dimension.

    Differentiable in `X` (a gather and `1 - x`).

    Args:
        X: `batch_shape x n x d` inputs in the unit cube.
        perms: `E x d` from :func:`input_symmetries`.
        flips: `E x d` from :func:`input_symmetries`.

    Returns:
        `E x batch_shape x n x d`.
    """
    E, d = perms.shape
    if X.shape[-1] != d:
        raise ValueError(f"X has d={X.shape[-1]} features but the maps are for d={d}.")
    shape = (E,) + (1,) * (X.dim() - 1) + (d,)
    perms = perms.to(X.device)
    flips = flips.to(X.device)
    index = perms.view(shape).expand(E, *X.shape)  # `E x batch x n x d`
    Xp = torch.gather(X.unsqueeze(0).expand(E, *X.shape), -1, index)
    return torch.where(flips.view(shape), 1.0 - Xp, Xp)
