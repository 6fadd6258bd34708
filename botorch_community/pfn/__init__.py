#!/usr/bin/env python3
r"""The PFN network, its explicit context cache, and loading of pretrained weights."""

from botorch_community.pfn.checkpoint import (
    CheckpointError,
    load_pretrained,
    save_pretrained,
)
from botorch_community.pfn.kv_cache import KVCache
from botorch_community.pfn.transformer import default_borders, PFNLayer, PFNTransformer

__all__ = [
    "CheckpointError",
    "KVCache",
    "PFNLayer",
    "PFNTransformer",
    "default_borders",
    "load_pretrained",
    "save_pretrained",
]
