#!/usr/bin/env python3
r"""Priors over datasets that PFNs are trained on."""

from botorch_community.pfn.priors.gp import (
    GPHyperparameters,
    GPPriorBatch,
    GPPriorConfig,
    sample_gamma,
    sample_gp_prior,
    sample_hyperparameters,
    sample_inputs,
    sample_targets,
)

__all__ = [
    "GPHyperparameters",
    "GPPriorBatch",
    "GPPriorConfig",
    "sample_gamma",
    "sample_gp_prior",
    "sample_hyperparameters",
    "sample_inputs",
    "sample_targets",
]
