#!/usr/bin/env python3
r"""Small random networks for tests, examples and speed benchmarks."""

from __future__ import annotations

import torch

from botorch_community.pfn.cell_transformer import build_network
from botorch_community.pfn.transformer import PFNTransformer


def random_pfn(
    num_features: int = 8,
    emsize: int = 32,
    nlayers: int = 2,
    nhead: int = 2,
    nhid: int = 64,
    num_buckets: int = 64,
    seed: int = 0,
    **kwargs,
) -> PFNTransformer:
    r"""An untrained network with reproducible random weights, in eval mode (a
    :class:`PFNTransformer`, or with ``tokens="cells"`` a
    :class:`~botorch_community.pfn.cell_transformer.PFNCellTransformer`).

    Random weights give non-trivial, input-dependent predictions, which is what
    exactness tests and speed benchmarks need; never use one as a surrogate.
    """
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        net = build_network(
            num_features=num_features,
            emsize=emsize,
            nlayers=nlayers,
            nhead=nhead,
            nhid=nhid,
            num_buckets=num_buckets,
            **kwargs,
        )
        # Non-zero missing-target embedding so pending points change predictions.
        with torch.no_grad():
            net.nan_y_embedding.normal_(0.0, 0.5)
            # Switch the metric-attention terms on (they start off) so that tests
            # exercise them.
            for layer in net.layers:
                if getattr(layer, "metric_features", 0):
                    layer.metric_gate.normal_(0.0, 1.0)
                    layer.metric_proj.weight.normal_(0.0, 0.3)
                    # moderate scales (the initial ones reach 3e4): keeps float32
                    # round-off in gradients at the level tests compare
                    layer.metric_proj.bias.normal_(1.0, 1.0)
            if net.noise_hint:  # known noise changes the prediction visibly
                net.noise_encoder.weight.normal_(0.0, 0.5)
            if net.gp_head:  # context-dependent particles, a visible GP part
                for name in ("hyper", "feature_hyper", "target_hyper"):
                    if hasattr(net.gp, name):
                        getattr(net.gp, name).weight.normal_(0.0, 0.1)
                net.gp.mix.weight.normal_(0.0, 0.1)
                net.gp.mix.bias.fill_(0.0)
    finally:
        torch.random.set_rng_state(gen_state)
    return net.eval()
