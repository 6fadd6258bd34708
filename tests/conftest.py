#!/usr/bin/env python3
r"""Test-suite settings.

Tests use tiny networks, for which thread start-up dominates: one intra-op thread is
much faster than two on a busy 2-core machine (measured: ~100x per op under load).
"""

import torch

torch.set_num_threads(1)
