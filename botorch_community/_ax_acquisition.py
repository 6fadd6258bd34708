#!/usr/bin/env python3
r"""The acquisition that :func:`botorch_community.ax.pfn_generation_strategy` uses by
default: Ax's own choice of acquisition function, turned into what suits a PFN.

Ax picks the BoTorch acquisition class from the optimization config at every generation
call (``choose_botorch_acqf_class``): ``qLogNoisyExpectedImprovement`` for one objective,
``qLogNoisyExpectedHypervolumeImprovement`` for several, ``qLogProbabilityOfFeasibility``
while no observed point is feasible. :class:`PFNAcquisition` replaces the noisy variants
(:func:`pfn_acquisition_class`):

* one objective without outcome constraints, one candidate and no pending trials: the
  exact discretized LogEI
  (:class:`~botorch_community.acquisition.discretized.DiscretizedLogExpectedImprovement`);
* the same with a batch (`n > 1`) or pending trials:
  :class:`PFNBatchLogExpectedImprovement`, the exact discretized LogEI while nothing is
  pending (a batch's first point) and ``qLogExpectedImprovement`` on the joint posterior
  of the candidate and the pending points otherwise (the GP head's correlation,
  :meth:`PFNModel.posterior`), as Ax's GP couples them: a point beside a pending one
  gains little, so batches spread as the GP's do (the discretized LogEI saw pending
  points only as believed rows of the context, and its batches were half as spread);
* one objective with outcome constraints: ``qLogExpectedImprovement`` with the same
  constraints and, as incumbent, the best feasible posterior mean at the observations;
* several objectives: ``qLogExpectedHypervolumeImprovement`` on the Pareto front of the
  posterior means at the observations (BoTorch's input constructor).

It also carries the warm start of the README's loop across Ax's generations: Ax refits
the same ``Surrogate`` every generation with a new model, so the PFN models' fitted GP
particles are kept on that surrogate after each generation's optimization
(``_pfn_fitted_particles``, one entry per PFN submodel, with their weight logits in
``_pfn_fitted_prior_logits``) and the next generation's models start their refinement
from them (:meth:`PFNModel.warm_start_from`).

The noisy variants sample the joint posterior of every observed point with the
candidates at each call; the plug-in variants take the observed points' posterior means
as fixed, at the cost of the `q` candidates alone. What that gives up is the coupling of a
candidate with the observed points: where the model leaves latent spread at an observed
point (inferred noise), a candidate on that point would still show improvement, and Ax's
duplicate check had to reject re-proposed points (two objectives, ``benchmarks/RESULTS.md``
section 9). So while a plug-in acquisition is optimised the PFN models also condition on
those means as noise-free values (``PFNModel.observations_at_means``): the acquisition's
premise made the model's, and an evaluated point shows no improvement. Tracked metrics
that are neither objective nor constraint do not matter: Ax subsets the model first.

This module imports Ax; only :mod:`botorch_community.ax` imports it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ax.generators.torch.botorch_modular.acquisition import Acquisition
from botorch.acquisition.objective import IdentityMCObjective
from botorch.acquisition.logei import (
    TAU_MAX,
    qLogExpectedImprovement,
    qLogNoisyExpectedImprovement,
)
from botorch.acquisition.multi_objective.logei import (
    qLogExpectedHypervolumeImprovement,
    qLogNoisyExpectedHypervolumeImprovement,
)

from botorch.acquisition.input_constructors import (
    _register_acqf_input_constructor,
    get_acqf_input_constructor,
    get_best_f_mc,
)
from botorch.utils.constraints import get_outcome_constraint_transforms
from botorch.utils.datasets import SupervisedDataset
from torch import Tensor

from botorch_community.acquisition.discretized import DiscretizedLogExpectedImprovement

__all__ = ["PFNAcquisition", "PFNBatchLogExpectedImprovement", "pfn_acquisition_class"]


class PFNBatchLogExpectedImprovement(qLogExpectedImprovement):
    r"""LogEI for a batch chosen greedily (Ax's sequential ``optimize_acqf``): the
    exact discretized LogEI of a candidate while no point is pending, and qLogEI of
    the candidate jointly with the pending points otherwise.

    The first point of a batch needs no coupling, so it gets the exact integral over
    the GP head's mixture; every later one is compared with the pending points' joint
    samples (:meth:`PFNModel.posterior` is joint for `q > 1`), so a candidate next to
    a pending point, whose value moves with the pending one's, gains little. Built by
    qLogEI's input constructor (``best_f``: the best observed value, as for Ax's GP; no
    plug-in means: the observed points keep their latent spread, as the discretized
    LogEI of a single candidate sees them).

    The smooth maximum over the batch runs at a temperature of 1e-6 of the training
    targets' standard deviation unless ``tau_max`` is set (qLogEI's default is 0.01 in
    the objective's units): a
    smooth maximum credits a copy of a pending point with about `tau_max log 2` of
    improvement, and late in a run, where the improvement the model still expects is
    smaller than that, greedy batches stacked near-copies (Branin in Ax, one seed: three
    points of a batch within 1e-4 of each other).
    """

    def __init__(self, model: Any, best_f: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("tau_max", TAU_MAX) == TAU_MAX:  # (a value a user set is kept)
            kwargs["tau_max"] = TAU_MAX_RELATIVE * _target_scale(model)
        super().__init__(model, best_f, *args, **kwargs)
        self._exact = None  # an MC objective other than the identity: qLogEI throughout
        if isinstance(self.objective, IdentityMCObjective):
            self._exact = DiscretizedLogExpectedImprovement(
                model, best_f=self.best_f, posterior_transform=self.posterior_transform
            )

    def forward(self, X: Tensor) -> Tensor:
        r"""`b x q x d` candidates -> `b` values."""
        if self._exact is not None and self.X_pending is None and X.shape[-2:-1] == (1,):
            return self._exact(X)
        return super().forward(X)


#: :class:`PFNBatchLogExpectedImprovement`'s smooth-max temperature, relative to the
#: training targets' standard deviation.
TAU_MAX_RELATIVE = 1e-6


def _target_scale(model: Any) -> float:
    r"""The standard deviation of a model's training targets (1 where it has none, or
    they are constant)."""
    models = getattr(model, "models", None) or [model]
    Y = getattr(models[0], "train_Y", None)
    if Y is None or Y.numel() < 2:
        return 1.0
    sd = float(Y.std())
    return sd if math.isfinite(sd) and sd > 0 else 1.0


_register_acqf_input_constructor(
    PFNBatchLogExpectedImprovement, get_acqf_input_constructor(qLogExpectedImprovement)
)

#: The plug-in MC acquisitions :func:`pfn_acquisition_class` picks: they take the PFN's
#: means at the observations as known values.
_PLUG_IN_ACQUISITIONS = (qLogExpectedImprovement, qLogExpectedHypervolumeImprovement)


def pfn_acquisition_class(
    botorch_acqf_class: type | None, torch_opt_config: Any, batch: bool = False
) -> type | None:
    r"""The acquisition class to use in place of Ax's choice ``botorch_acqf_class``
    (`batch`: more than one candidate is asked for, or trials are pending).

    * qLogNEI, one objective, no outcome constraints: discretized LogEI (exact); with
      `batch`, :class:`PFNBatchLogExpectedImprovement` (qLogEI on the joint posterior
      of the candidate and the pending points).
    * qLogNEI with outcome constraints: qLogEI (constraints as in qLogNEI, the incumbent
      the best feasible observation).
    * qLogNEHVI: qLogEHVI on the Pareto front of the PFN's posterior means at the
      observations.

    The "noisy" variants sample the joint posterior of all observed points with the
    candidates at every call, because a GP's posterior couples them. A PFN's marginal
    predictive at the observations is a constant of the generation, so the plug-in
    variants see the same information at a fraction of the cost (q points per call
    instead of n + q).
    """
    single = not getattr(torch_opt_config, "is_moo", False)
    unconstrained = getattr(torch_opt_config, "outcome_constraints", None) is None
    if botorch_acqf_class is qLogNoisyExpectedImprovement:
        if single and unconstrained:
            return PFNBatchLogExpectedImprovement if batch else DiscretizedLogExpectedImprovement
        return qLogExpectedImprovement
    if botorch_acqf_class is qLogNoisyExpectedHypervolumeImprovement:
        return qLogExpectedHypervolumeImprovement
    return botorch_acqf_class


class PFNAcquisition(Acquisition):
    r"""Ax ``Acquisition`` that swaps Ax's choice for what suits a PFN surrogate
    (:func:`pfn_acquisition_class`; see the module docstring)."""

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
        self._pfn_surrogate = surrogate
        _warm_start_models(surrogate)
        if not botorch_acqf_classes_with_options:
            pending = getattr(torch_opt_config, "pending_observations", None) or []
            batch = (n or 1) > 1 or any(p is not None and len(p) > 0 for p in pending)
            chosen = pfn_acquisition_class(botorch_acqf_class, torch_opt_config, batch)
            if chosen is not botorch_acqf_class:
                # options meant for Ax's MC acquisition do not apply to the analytic one
                botorch_acqf_options = {}
            botorch_acqf_class = chosen
        # the plug-in MC acquisitions take the means at the observations as known values:
        # the models condition on them too, so an observed point shows no improvement
        plug_in = botorch_acqf_class in _PLUG_IN_ACQUISITIONS
        for model in _pfn_models(surrogate):
            model.observations_at_means = plug_in
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

    def optimize(self, *args: Any, **kwargs: Any) -> Any:
        r"""Ax's optimization; then the PFN models' fitted particles are kept on the
        surrogate for the next generation's warm start."""
        models = _pfn_models(self._pfn_surrogate)
        try:
            out = super().optimize(*args, **kwargs)
        finally:  # the surrogate's predictions (e.g. `Client.predict`) keep their spread
            for model in models:
                model.observations_at_means = False
        if models:
            self._pfn_surrogate._pfn_fitted_particles = [m.fitted_particles for m in models]
            self._pfn_surrogate._pfn_fitted_prior_logits = [m.fitted_prior_logits
                                                            for m in models]  # fmt: skip
        return out

    def _construct_botorch_acquisition(
        self, botorch_acqf_class: type, botorch_acqf_options: dict[str, Any], model: Any
    ) -> Any:
        if (
            botorch_acqf_class is qLogExpectedImprovement
            and "best_f" not in botorch_acqf_options
        ):
            botorch_acqf_options = {
                **botorch_acqf_options,
                "best_f": self._plug_in_best_f(botorch_acqf_class, model),
            }
        return super()._construct_botorch_acquisition(
            botorch_acqf_class=botorch_acqf_class,
            botorch_acqf_options=botorch_acqf_options,
            model=model,
        )

    def _plug_in_best_f(self, botorch_acqf_class: type, model: Any) -> Tensor:
        r"""qLogEI's incumbent: the best feasible objective of the posterior means at the
        observed points, on the model as Ax subset it (BoTorch's default reads every
        metric's training data, tracked ones included, and fails to match the model)."""
        objective, posterior_transform = self.get_botorch_objective_and_transform(
            botorch_acqf_class=botorch_acqf_class,
            model=model,
            objective_weights=self._objective_weights,
            outcome_constraints=self._outcome_constraints,
            X_observed=self.X_observed,
        )
        X = self.X_observed
        with torch.no_grad():  # the marginal means (q = 1 each: no n x n joint)
            mean = model.posterior(X.unsqueeze(-2)).mean.squeeze(-2)  # n x m
        dataset = SupervisedDataset(
            X=X, Y=mean,
            feature_names=[f"x{i}" for i in range(X.shape[-1])],
            outcome_names=[f"y{i}" for i in range(mean.shape[-1])],
        )  # fmt: skip
        return get_best_f_mc(
            training_data=dataset,
            objective=objective,
            posterior_transform=posterior_transform,
            constraints=get_outcome_constraint_transforms(self._outcome_constraints),
            model=model,
        )


def _pfn_models(surrogate: Any) -> list:
    r"""The ``PFNModel`` s behind an Ax surrogate (one per metric in a ``ModelList``)."""
    from botorch_community.models.prior_fitted_network import PFNModel

    model = getattr(surrogate, "_model", None)
    if isinstance(model, PFNModel):
        return [model]
    return [m for m in getattr(model, "models", []) if isinstance(m, PFNModel)]


def _warm_start_models(surrogate: Any) -> None:
    r"""Start the surrogate's PFN models' refinement from the particles the previous
    generation's models fitted (kept on the surrogate by :meth:`PFNAcquisition.optimize`),
    where they match (same position and `d`)."""
    previous = getattr(surrogate, "_pfn_fitted_particles", None)
    if not previous:
        return
    logits = getattr(surrogate, "_pfn_fitted_prior_logits", None) or [None] * len(previous)
    for model, theta, prior in zip(_pfn_models(surrogate), previous, logits):
        if theta is None or model._gp_init is not None:
            continue
        if theta.shape[-1] == model.train_X.shape[-1] + 2 and theta.shape[0] == model.ensemble_size:
            model.warm_start_from(theta, prior)
