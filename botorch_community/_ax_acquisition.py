#!/usr/bin/env python3
r"""The acquisition that :func:`botorch_community.ax.pfn_generation_strategy` uses by
default: Ax's own choice of acquisition function, with the PFN's exact discretized LogEI
where that choice is plain single-objective noisy EI.

Ax picks the BoTorch acquisition class from the optimization config at every generation
call (``choose_botorch_acqf_class``): ``qLogNoisyExpectedImprovement`` for one objective,
``qLogNoisyExpectedHypervolumeImprovement`` for several, ``qLogProbabilityOfFeasibility``
while no observed point is feasible. :class:`PFNAcquisition` keeps that choice, except
for one objective without outcome constraints, where it uses
:class:`~botorch_community.acquisition.discretized.DiscretizedLogExpectedImprovement`:
exact under the PFN's bar distribution and one network pass per candidate (qLogNEI
re-evaluates the joint posterior of all baseline points at every call). Tracked metrics
that are neither objective nor constraint do not matter: Ax subsets the model to the
objective first.

This module imports Ax; only :mod:`botorch_community.ax` imports it.
"""

from __future__ import annotations

from typing import Any

from ax.generators.torch.botorch_modular.acquisition import Acquisition
from botorch.acquisition.logei import qLogNoisyExpectedImprovement

from botorch_community.acquisition.discretized import DiscretizedLogExpectedImprovement

__all__ = ["PFNAcquisition", "pfn_acquisition_class"]


def pfn_acquisition_class(
    botorch_acqf_class: type | None, torch_opt_config: Any
) -> type | None:
    r"""The acquisition class to use for Ax's choice ``botorch_acqf_class``: discretized
    LogEI in place of qLogNEI for one objective without outcome constraints."""
    single = not getattr(torch_opt_config, "is_moo", False)
    unconstrained = getattr(torch_opt_config, "outcome_constraints", None) is None
    if botorch_acqf_class is qLogNoisyExpectedImprovement and single and unconstrained:
        return DiscretizedLogExpectedImprovement
    return botorch_acqf_class


class PFNAcquisition(Acquisition):
    r"""Ax ``Acquisition`` that swaps Ax's qLogNEI for the PFN's discretized LogEI on
    single, unconstrained objectives (see the module docstring)."""

    def __init__(
        self,
        surrogate: Any,
        search_space_digest: Any,
        torch_opt_config: Any,
        botorch_acqf_class: type | None,
        botorch_acqf_options: dict[str, Any] | None = None,
        botorch_acqf_classes_with_options: list | None = None,
        n: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        if not botorch_acqf_classes_with_options:
            chosen = pfn_acquisition_class(botorch_acqf_class, torch_opt_config)
            if chosen is not botorch_acqf_class:
                # options meant for Ax's MC acquisition do not apply to the analytic one
                botorch_acqf_options = {}
            botorch_acqf_class = chosen
        super().__init__(
            surrogate=surrogate,
            search_space_digest=search_space_digest,
            torch_opt_config=torch_opt_config,
            botorch_acqf_class=botorch_acqf_class,
            botorch_acqf_options=botorch_acqf_options,
            botorch_acqf_classes_with_options=botorch_acqf_classes_with_options,
            n=n,
            options=options,
        )
