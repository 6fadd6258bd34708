#!/usr/bin/env python3
r"""The architecture and inference settings of a :class:`PFNTransformer`, in one place.

:class:`PFNConfig` is what the network's constructor reads, what a checkpoint's JSON
records (``"config"``), what a training run's ``model`` section fills, and what a warm
start may grow (:data:`GROWABLE`). Every field is validated on construction, before
any tensor is allocated, so a bad checkpoint config fails with a message that names
the field instead of an allocation error deep in ``nn.Linear``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Optional

#: Options of earlier releases that no shipped network used; configs that switch them
#: on are refused with this explanation (configs that record them off still load).
REMOVED_OPTIONS = {
    "gaussian_head": "a Gaussian output component (no shipped network used it)",
    "target_readout": "a kernel read-out of the context targets (never shipped; see the "
    "model card's 'Experiments not shipped')",
}

#: Token layouts of the network (:attr:`PFNConfig.tokens`).
TOKEN_LAYOUTS = ("rows", "cells")

#: Largest sizes accepted from a config (far above any trained network; they stop a
#: corrupt or hostile config from allocating gigabytes before the weights are matched).
_MAX = dict(num_features=1024, emsize=4096, nlayers=64, nhead=64, nhid=16384,
            num_buckets=100_000, gp_particles=64)  # fmt: skip
#: Closed ranges of the real-valued settings.
_NUMBER_RANGES = dict(gp_min_noise=(1e-12, 1.0), gp_refine_min_per_dim=(0.0, 1000.0),
                      gp_refine_start_per_dim=(0.0, 1000.0),
                      gp_refine_steps_per_ratio=(0.0, 1000.0),
                      gp_refine_warm_tol=(0.0, 1e6),
                      gp_reuse_logits_growth=(0.0, 1e6))  # fmt: skip


@dataclass(frozen=True)
class PFNConfig:
    r"""Architecture and inference settings of a :class:`PFNTransformer`.

    Attributes:
        num_features: The most input dimensions the network accepts. Inputs with
            `d < num_features` are zero-padded and rescaled by `num_features / d`.
        emsize: Token embedding size.
        nlayers: Number of transformer layers.
        nhead: Number of attention heads (divides `emsize`).
        nhid: Hidden size of each layer's MLP and of the decoder.
        num_buckets: Number of buckets of the output bar distribution.
        dropout: Dropout rate (training only).
        max_context: The largest training-set size the network was trained on
            (informational; models warn beyond it). None if unknown.
        metric_attention: A learned, query-dependent squared-distance term between
            inputs in every layer's attention logits (:meth:`PFNLayer.metric_bias`),
            so a head can attend sharply to the closest context rows.
        noise_hint: The network accepts known observation-noise variances of the
            context rows (`train_Yvar`).
        gp_head: A mixture of GP predictives whose hyperparameter particles the
            network proposes from its context token is mixed into the output
            (:class:`~botorch_community.pfn.gp_head.GPHead`).
        gp_particles: The number of hyperparameter particles of the GP head.
        gp_refine_steps: Adam steps of marginal-likelihood ascent on the GP head's
            particles at inference (eval mode; 0: off). An inference setting: it
            changes the predictions, not the weights.
        gp_refine_min_context: Refine contexts of at least this many observed targets.
        gp_refine_max_rows: Refine on at most this many observed rows per context (a
            quarter with the largest targets, the rest spread over the others); the
            refined particles are conditioned on all rows. Caps the refinement's cost
            at `O(gp_refine_max_rows^3)` per step for large contexts.
        gp_refine_warm_steps: Adam steps of the refinement when it starts from the
            particles of an earlier fit (``PFNModel(..., warm_start=previous_model)``)
            instead of the network's proposals.
        gp_min_noise: The smallest noise variance the GP head's particles infer, on the
            standardised targets (known noise variances, ``train_Yvar``, are used as
            given down to ``1e-6``). ``1e-6`` lets the particles interpolate
            deterministic data almost exactly; ``1e-4``, the lower bound of BoTorch's
            ``SingleTaskGP`` noise, leaves a little latent spread at the
            observations, so EI keeps improving near the incumbent instead of moving
            to unexplored corners late in a run. An inference setting.
        gp_refine_start_per_dim: With a positive value, contexts are refined from
            this many observed targets per input dimension (at least 5) where that is
            fewer than ``gp_refine_min_context``: small-d contexts are refined early,
            while high-d ones still wait for ``gp_refine_min_context`` (0: off). Before
            its refinement starts, a context keeps the network's proposals, whose
            outputscales are larger than a fitted GP's, so EI favours the cube's corners.
            An inference setting.
        gp_constant_mean: Each GP particle gets the constant prior mean that maximises
            its marginal likelihood (generalised least squares) instead of zero (the
            context's mean). An inference setting.
        gp_refine_min_per_dim: Refine only contexts with at least this many observed
            targets per input dimension (as well as ``gp_refine_min_context``): the
            ascent fits `d` lengthscales per particle, and with fewer than about `2 d`
            observations it overfits them (0: no such bound; 2 calibrates the
            high-dimensional network on prior data but loses BO, so it ships
            ``gp_refine_steps_per_ratio`` instead). An inference setting.
        gp_refine_steps_per_ratio: With a positive value `c`, a fit from the network's
            proposals (not a warm start) refines a context of `m` observed targets in
            `d` inputs for `min(gp_refine_steps, max(5, ceil(c m / d)))` steps: early
            stopping, so that with few observations per lengthscale the ARD fit stays
            near the proposals instead of overfitting (0: always ``gp_refine_steps``).
            Warm starts still take ``gp_refine_warm_steps``, so a BO loop's chain of
            warm-started fits converges as before (high-dimensional network: 7.5, so 5
            steps up to `m = d` and 30 from `m = 4 d`). An inference setting.
        gp_refine_warm_tol: With a positive value, a warm-started refinement stops at
            the first step where no raw parameter's gradient of the log marginal
            likelihood per observation reaches it (0: always ``gp_refine_warm_steps``
            steps). The previous BO iteration's fit is usually stationary already on
            the grown context; Adam's first step moves every parameter by about its
            learning rate whatever the gradient, so the fixed steps cost six
            conditionings to move the fit away and back. An inference setting.
        gp_reuse_logits_growth: With a positive value `r`, a warm-started fit with the
            GP predictive alone (``PFNModel``'s default) reuses the particles' weight
            logits of the warm start's last network pass while its context has at most
            `(1 + r)` times the rows that pass saw, and then needs no network pass
            where every context is refined: the warm start already gives the particles,
            and the logits are all the pass adds (0: a pass every fit). A BO loop's
            chain of fits then runs the network about once per `r` relative growth of
            its data. An inference setting.
        tokens: ``"rows"``: one token per data row, inputs zero-padded to
            `num_features` (:class:`~botorch_community.pfn.transformer.PFNTransformer`).
            ``"cells"``: one token per input dimension of each row plus one for its
            target, with attention across a row's cells and across rows within each
            dimension; the weights do not depend on `d`, and `num_features` is only the
            largest `d` it accepts
            (:class:`~botorch_community.pfn.cell_transformer.PFNCellTransformer`).
    """

    num_features: int
    emsize: int = 256
    nlayers: int = 6
    nhead: int = 4
    nhid: int = 512
    num_buckets: int = 1000
    dropout: float = 0.0
    max_context: Optional[int] = None
    metric_attention: bool = False
    noise_hint: bool = False
    gp_head: bool = False
    gp_particles: int = 4
    gp_refine_steps: int = 0
    gp_refine_min_context: int = 20
    gp_refine_max_rows: int = 200
    gp_refine_warm_steps: int = 6
    gp_constant_mean: bool = False
    gp_refine_start_per_dim: float = 0.0
    gp_min_noise: float = 1e-6
    gp_refine_min_per_dim: float = 0.0
    gp_refine_steps_per_ratio: float = 0.0
    gp_refine_warm_tol: float = 0.0
    gp_reuse_logits_growth: float = 0.0
    tokens: str = "rows"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "tokens":
                if value not in TOKEN_LAYOUTS:
                    raise ValueError(
                        f"PFNConfig.tokens must be one of {sorted(TOKEN_LAYOUTS)}, "
                        f"got {value!r}."
                    )
            elif f.type in ("bool",):
                if not isinstance(value, bool):
                    raise ValueError(f"PFNConfig.{f.name} must be true or false, got {value!r}.")
            elif f.name in _NUMBER_RANGES:
                low, high = _NUMBER_RANGES[f.name]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    low <= value <= high
                ):
                    raise ValueError(
                        f"PFNConfig.{f.name} must be a number in [{low:g}, {high:g}], got "
                        f"{value!r}."
                    )
            elif f.name == "dropout":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    0.0 <= value < 1.0
                ):
                    raise ValueError(f"PFNConfig.dropout must be in [0, 1), got {value!r}.")
            elif f.name == "max_context":
                if value is not None and (not _is_int(value) or value < 0):
                    raise ValueError(
                        f"PFNConfig.max_context must be a non-negative integer or null, "
                        f"got {value!r}."
                    )
            else:  # integer sizes and settings
                low = 0 if f.name in ("gp_refine_steps", "gp_refine_warm_steps") else 1
                high = _MAX.get(f.name, 10**6)
                if not _is_int(value) or not low <= value <= high:
                    raise ValueError(
                        f"PFNConfig.{f.name} must be an integer in [{low}, {high}], got "
                        f"{value!r}."
                    )
        if self.emsize % self.nhead != 0:
            raise ValueError(
                f"PFNConfig.emsize ({self.emsize}) must be divisible by nhead ({self.nhead})."
            )
        if self.tokens == "cells" and self.metric_attention:
            raise ValueError(
                "PFNConfig.metric_attention is an option of row tokens (tokens='rows'); "
                "a cells network attends over each input dimension separately."
            )

    # ------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        r"""The JSON form: the base fields always, an option's fields only where it is
        on (so configs of networks without an option stay as they were)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for flag, extra in _OPTION_FIELDS.items():
            if not out[flag]:
                for name in (flag, *extra):
                    out.pop(name)
        if not self.gp_refine_steps:
            for name in ("gp_refine_steps", "gp_refine_min_context", "gp_refine_max_rows",
                         "gp_refine_warm_steps"):
                out.pop(name, None)
        if not self.gp_constant_mean:
            out.pop("gp_constant_mean", None)
        if self.gp_min_noise == _FIELD_DEFAULTS["gp_min_noise"]:  # configs stay as they were
            out.pop("gp_min_noise", None)
        if not self.gp_refine_start_per_dim:
            out.pop("gp_refine_start_per_dim", None)
        if not self.gp_refine_min_per_dim:
            out.pop("gp_refine_min_per_dim", None)
        if not self.gp_refine_steps_per_ratio:
            out.pop("gp_refine_steps_per_ratio", None)
        if not self.gp_refine_warm_tol:
            out.pop("gp_refine_warm_tol", None)
        if not self.gp_reuse_logits_growth:
            out.pop("gp_reuse_logits_growth", None)
        if self.tokens == "rows":  # configs of row networks stay as they were
            out.pop("tokens")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PFNConfig":
        r"""A config from its JSON form (also that of older checkpoints).

        Raises:
            ValueError: Unknown fields, a removed option switched on, or a field of the
                wrong type or out of range (the message names it).
        """
        if not isinstance(data, dict):
            raise ValueError(f"A PFN config must be a JSON object, got {type(data).__name__}.")
        data = dict(data)
        for name, what in REMOVED_OPTIONS.items():
            if data.pop(name, False):
                raise ValueError(
                    f"The option {name!r} ({what}) was removed from this package; this "
                    "checkpoint needs an older release."
                )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown PFN config field(s) {unknown}; known: {sorted(known)}.")
        if "num_features" not in data:
            raise ValueError("A PFN config needs 'num_features'.")
        return cls(**data)

    def replace(self, **changes: Any) -> "PFNConfig":
        r"""A copy with `changes` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def architecture(self) -> dict[str, Any]:
        r"""The fields that determine the weights' shapes and names (not the inference
        settings): two configs with equal architectures load each other's weights."""
        out = self.to_dict()
        for name in _INFERENCE_FIELDS:
            out.pop(name, None)
        return out


def resolve_config(config: Any, fields: dict[str, Any]) -> "PFNConfig":
    r"""A network constructor's config: `config` (a :class:`PFNConfig`, its dict form,
    or None) with the keyword `fields` applied over it (validated)."""
    if config is None:
        return PFNConfig.from_dict(fields)
    if isinstance(config, dict):
        return PFNConfig.from_dict({**config, **fields})
    return config.replace(**fields) if fields else config


#: The dataclass defaults of :class:`PFNConfig`'s fields.
_FIELD_DEFAULTS = {f.name: f.default for f in fields(PFNConfig)}


#: Fields of an option that are only recorded while the option is on.
_OPTION_FIELDS = {
    "metric_attention": (),
    "noise_hint": (),
    "gp_head": ("gp_particles", "gp_refine_steps", "gp_refine_min_context", "gp_refine_max_rows",
                "gp_refine_warm_steps", "gp_constant_mean", "gp_refine_min_per_dim",
                "gp_min_noise", "gp_refine_start_per_dim", "gp_refine_steps_per_ratio",
                "gp_refine_warm_tol", "gp_reuse_logits_growth"),
}
#: Fields that change predictions but not the weights.
_INFERENCE_FIELDS = ("dropout", "max_context", "gp_refine_steps", "gp_refine_min_context",
                     "gp_refine_max_rows", "gp_refine_warm_steps", "gp_constant_mean",
                     "gp_refine_min_per_dim", "gp_min_noise",
                     "gp_refine_start_per_dim", "gp_refine_steps_per_ratio",
                     "gp_refine_warm_tol", "gp_reuse_logits_growth")  # fmt: skip

#: Options a warm start can add to a trained network, with the prefixes (or, for
#: per-layer parts, the infix) of the parameters they add. Each added part starts
#: switched off (zero gates, zero maps), so the grown network computes what its source
#: did.
GROWABLE: dict[str, tuple[str, ...]] = {
    "metric_attention": (".metric_",),
    "noise_hint": ("noise_encoder",),
    "gp_head": ("gp.",),
}


def is_grown_parameter(name: str) -> bool:
    r"""Whether parameter `name` belongs to a part a warm start can add (:data:`GROWABLE`)."""
    return any(
        (p in name) if p.startswith(".") else name.startswith(p)
        for prefixes in GROWABLE.values()
        for p in prefixes
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
