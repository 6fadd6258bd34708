#!/usr/bin/env python3
r"""Choosing the rows of a large training set to use as a PFN's context.

The shipped network was trained on contexts of at most ``max_context`` (200) rows; beyond
that its predictions are unmeasured and encoding grows quickly (the GP head's refinement
is cubic in the rows it conditions on). :func:`select_context_rows` picks a subset that
keeps what BO needs: the best rows (where the incumbent and the optimum are), the most
recent rows (where the search is now) and a space-filling spread of the rest (the global
picture).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["select_context_rows"]


def select_context_rows(
    train_X: Tensor,
    train_Y: Tensor,
    max_rows: int = 200,
    maximize: bool = True,
    best_share: float = 0.25,
    recent_share: float = 0.25,
) -> Tensor:
    r"""Indices of at most `max_rows` rows of a training set, for a PFN's context.

    ``best_share * max_rows`` rows with the best targets, then ``recent_share * max_rows``
    of the most recent remaining rows (the last rows of `train_X`), then the rest by
    greedy farthest-point sampling among the remaining rows (each pick the row farthest
    from all rows chosen so far). Deterministic.

    Example:
        >>> idx = select_context_rows(train_X, train_Y, max_rows=200)
        >>> model = PFNModel(train_X[idx], train_Y[idx])

    Args:
        train_X: `n x d` inputs (in the order they were observed).
        train_Y: `n x 1` targets.
        max_rows: The context size to select (at most `n`).
        maximize: Whether larger targets are better.
        best_share: Share of `max_rows` given to the best rows.
        recent_share: Share of `max_rows` given to the most recent rows.

    Returns:
        A sorted `LongTensor` of `min(n, max_rows)` row indices.
    """
    if train_X.dim() != 2 or train_Y.shape != (train_X.shape[0], 1):
        raise ValueError(
            f"train_X must be `n x d` and train_Y `n x 1`, got {tuple(train_X.shape)} and "
            f"{tuple(train_Y.shape)}."
        )
    if max_rows < 1 or not 0 <= best_share <= 1 or not 0 <= recent_share <= 1 - best_share:
        raise ValueError(
            "Need max_rows >= 1, 0 <= best_share <= 1 and 0 <= recent_share <= "
            f"1 - best_share; got {max_rows}, {best_share}, {recent_share}."
        )
    n = train_X.shape[0]
    if n <= max_rows:
        return torch.arange(n, device=train_X.device)
    y = train_Y.squeeze(-1).detach()
    chosen = torch.zeros(n, dtype=torch.bool, device=train_X.device)
    n_best = int(round(best_share * max_rows))
    if n_best:
        chosen[(y if maximize else -y).topk(n_best).indices] = True
    n_recent = int(round(recent_share * max_rows))
    for i in range(n - 1, -1, -1):  # the most recent rows not chosen yet
        if n_recent == 0:
            break
        if not chosen[i]:
            chosen[i] = True
            n_recent -= 1
    X = train_X.detach()
    # distance of every row to the chosen set, then farthest-point picks
    if bool(chosen.any()):
        dist = torch.cdist(X, X[chosen]).min(dim=-1).values
    else:
        dist = torch.full((n,), float("inf"), dtype=X.dtype, device=X.device)
    dist[chosen] = -1.0
    for _ in range(max_rows - int(chosen.sum())):
        i = int(dist.argmax())
        chosen[i] = True
        dist = torch.minimum(dist, (X - X[i]).norm(dim=-1))
        dist[chosen] = -1.0
    return chosen.nonzero().squeeze(-1)
