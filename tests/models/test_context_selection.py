#!/usr/bin/env python3
r"""Tests for ``botorch_community.models.context_selection``."""

import pytest
import torch
from botorch_community.models.context_selection import select_context_rows

DT = torch.float64


def test_selection_keeps_best_recent_and_spread():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(600, 3, dtype=DT, generator=g)
    Y = -((X - 0.3) ** 2).sum(-1, keepdim=True)
    idx = select_context_rows(X, Y, max_rows=200)
    assert idx.shape == (200,) and idx.unique().numel() == 200
    assert bool((idx[1:] > idx[:-1]).all())  # sorted
    best = Y.squeeze(-1).topk(50).indices
    assert set(best.tolist()) <= set(idx.tolist())
    assert set(range(550, 600)) - set(best.tolist()) <= set(idx.tolist())  # recent rows
    # space filling: the rows left out are close to a selected row
    rest = torch.tensor(sorted(set(range(600)) - set(idx.tolist())))
    d_out = torch.cdist(X[rest], X[idx]).min(-1).values
    rnd = torch.randperm(600, generator=g)[:200]
    d_rnd = torch.cdist(X, X[rnd]).min(-1).values
    assert d_out.max() < d_rnd.max()
    # minimisation picks the smallest targets
    low = select_context_rows(X, Y, max_rows=200, maximize=False)
    assert set(Y.squeeze(-1).topk(50, largest=False).indices.tolist()) <= set(low.tolist())


def test_small_sets_and_bad_arguments():
    X, Y = torch.rand(10, 2, dtype=DT), torch.rand(10, 1, dtype=DT)
    assert torch.equal(select_context_rows(X, Y, 200), torch.arange(10))
    with pytest.raises(ValueError, match="n x d"):
        select_context_rows(X, Y.squeeze(-1), 5)
    with pytest.raises(ValueError, match="best_share"):
        select_context_rows(X, Y, 5, best_share=0.8, recent_share=0.5)


def test_warning_names_the_selection():
    from botorch_community.models.prior_fitted_network import PFNModel

    X, Y = torch.rand(201, 2, dtype=DT), torch.rand(201, 1, dtype=DT)
    with pytest.warns(RuntimeWarning, match="select_context_rows"):
        PFNModel(X, Y)
