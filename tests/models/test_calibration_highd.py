#!/usr/bin/env python3
r"""The shipped high-dimensional network's predictive on data of its own prior.

Fresh fits with fewer observations than inputs (`n = 25` in `d = 100`): the intervals of
the default predictive are calibrated (pooled coverage of central 50% / 90% intervals of
noisy test targets within 10 points of nominal). Thirty refinement steps from these few
observations overfit the `d` lengthscales (coverage about 25% / 57%); the shipped network
stops fresh fits early there (``gp_refine_steps_per_ratio``).
"""

import torch
from botorch_community.models.prior_fitted_network import PFNModel
from botorch_community.pfn.checkpoint import read_checkpoint_config
from botorch_community.pfn.networks import load_network
from botorch_community.pfn.priors.gp import GPPriorConfig, sample_gp_prior

D, N, M, DATASETS = 100, 25, 50, 8


def _coverage(net) -> dict:
    prior = GPPriorConfig.from_dict(read_checkpoint_config("default_highd")["metadata"]["prior"])
    batch = sample_gp_prior(DATASETS, N + M, prior, dim=D,
                            generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # fmt: skip
    hits = {50: [], 90: []}
    for i in range(DATASETS):
        X, Y = batch.X[i], batch.Y[i]
        model = PFNModel(X[:N], Y[:N], model=net)
        with torch.no_grad():
            post = model.posterior(X[N:], observation_noise=True)
            y = Y[N:, 0]
            for level, (lo, hi) in ((50, (0.25, 0.75)), (90, (0.05, 0.95))):
                q = post.icdf(torch.tensor([[lo], [hi]], dtype=post.dtype)).squeeze(-1)
                hits[level].append(((y >= q[0]) & (y <= q[1])).double())
    return {level: float(torch.cat(h).mean()) for level, h in hits.items()}


def test_fresh_fits_below_d_observations_are_calibrated():
    net = load_network("default", dim=D)
    assert net.config.gp_refine_steps_per_ratio > 0
    cov = _coverage(net)
    assert abs(cov[50] - 0.5) <= 0.1 and abs(cov[90] - 0.9) <= 0.1, cov
