#!/usr/bin/env python3
r"""PFNConfig: one validated configuration for the constructor, checkpoints and training."""

import json

import pytest
from botorch_community.pfn import PFNConfig, PFNTransformer
from botorch_community.pfn.checkpoint import DEFAULT_WEIGHTS
from botorch_community.pfn.config import GROWABLE, is_grown_parameter


def test_json_form_records_options_only_where_on():
    base = PFNConfig(num_features=3, emsize=16, nlayers=1, nhead=2)
    assert set(base.to_dict()) == {"num_features", "emsize", "nlayers", "nhead", "nhid",
                                   "num_buckets", "dropout", "max_context"}  # fmt: skip
    full = base.replace(metric_attention=True, gp_head=True, gp_refine_steps=3)
    assert full.to_dict()["gp_refine_steps"] == 3 and full.to_dict()["gp_particles"] == 4
    assert PFNConfig.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    assert full.architecture() == base.replace(metric_attention=True, gp_head=True).architecture()


def test_the_shipped_config_round_trips():
    raw = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())["config"]
    assert PFNConfig.from_dict(raw).to_dict() == raw


@pytest.mark.parametrize(
    "change, field",
    [({"emsize": 0}, "emsize"), ({"nhead": 3}, "divisible"), ({"dropout": 1.0}, "dropout"),
     ({"noise_hint": "yes"}, "noise_hint"), ({"max_context": -1}, "max_context"),
     ({"gp_refine_steps": -1}, "gp_refine_steps"), ({"num_buckets": 10**9}, "num_buckets")],
)  # fmt: skip
def test_bad_fields_are_named(change, field):
    with pytest.raises(ValueError, match=field):
        PFNConfig.from_dict({"num_features": 3, "emsize": 16, "nhead": 2, **change})


def test_unknown_and_removed_fields():
    with pytest.raises(ValueError, match="Unknown.*emsise"):
        PFNConfig.from_dict({"num_features": 3, "emsise": 16})
    with pytest.raises(ValueError, match="gaussian_head.*removed"):
        PFNConfig.from_dict({"num_features": 3, "gaussian_head": True})
    assert PFNConfig.from_dict({"num_features": 3, "gaussian_head": False}).num_features == 3


def test_growable_parts_are_exactly_the_parameters_they_add():
    plain = PFNTransformer(num_features=3, emsize=16, nlayers=2, nhead=2, nhid=16)
    for flag in GROWABLE:
        grown = PFNTransformer(plain.config.replace(**{flag: True}))
        added = set(grown.state_dict()) - set(plain.state_dict())
        assert added and all(is_grown_parameter(k) for k in added), flag
    assert not any(is_grown_parameter(k) for k in plain.state_dict())
