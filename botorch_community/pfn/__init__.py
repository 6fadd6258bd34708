#!/usr/bin/env python3
r"""The PFN network, its explicit context cache, and loading of pretrained weights."""

from botorch_community.pfn.cell_transformer import build_network, PFNCellTransformer
from botorch_community.pfn.checkpoint import (
    CheckpointError,
    load_pretrained,
    save_pretrained,
)
from botorch_community.pfn.config import PFNConfig
from botorch_community.pfn.kv_cache import KVCache
from botorch_community.pfn.layer import PFNLayer
from botorch_community.pfn.networks import (
    clear_network_cache,
    default_network,
    load_network,
    register_network,
)
from botorch_community.pfn.target_map import TargetMap
from botorch_community.pfn.transformer import default_borders, PFNTransformer

__all__ = [
    "CheckpointError",
    "PFNCellTransformer",
    "build_network",
    "KVCache",
    "PFNConfig",
    "PFNLayer",
    "PFNTransformer",
    "TargetMap",
    "clear_network_cache",
    "default_network",
    "load_network",
    "register_network",
    "default_borders",
    "load_pretrained",
    "save_pretrained",
]
