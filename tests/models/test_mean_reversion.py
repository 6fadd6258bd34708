#!/usr/bin/env python3
r"""Where the shipped network's predictive goes far from BO data.

BO data cluster where the objective is high. A model that reverts to the context's mean
far from the data then scores the unexplored faces of the cube as if they were average,
and EI sends proposals there. A fitted ``SingleTaskGP`` reverts to its ``ConstantMean``,
a least-squares level that counts a cluster of rows as few; so does each GP particle of
the shipped network (``gp_constant_mean``).
"""

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.test_functions import Ackley
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch.quasirandom import SobolEngine

from botorch_community.models.prior_fitted_network import PFNModel


def _bo_like_context(seed: int, d: int = 4):
    r"""8 space-filling rows and 24 clustered near the optimum of a negated Ackley."""
    f = Ackley(dim=d, negate=True)
    g = torch.Generator().manual_seed(seed)
    spread = SobolEngine(d, scramble=True, seed=seed).draw(8).double()
    cluster = (0.5 + 0.06 * torch.randn(24, d, generator=g, dtype=torch.float64)).clamp(0, 1)
    X = torch.cat([spread, cluster])
    lb, ub = f.bounds
    return X, f(lb + (ub - lb) * X).unsqueeze(-1)


def test_far_from_clustered_data_the_mean_reverts_as_a_fitted_gp_does():
    corners = torch.rand(256, 4, generator=torch.Generator().manual_seed(0)).round().double()
    for seed in range(2):
        X, Y = _bo_like_context(seed)
        z = lambda m: ((m - Y.mean()) / Y.std()).mean().item()  # in std units of y
        pfn = PFNModel(X, Y)
        gp = SingleTaskGP(X, Y, outcome_transform=Standardize(m=1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        with torch.no_grad():
            m_pfn = z(pfn.posterior(corners.unsqueeze(1)).mean)
            m_gp = z(gp.posterior(corners.unsqueeze(1)).mean)
        assert m_gp < -0.3  # the reference: well below the context's mean
        assert m_pfn < -0.3 and abs(m_pfn - m_gp) < 0.35, (seed, m_pfn, m_gp)
