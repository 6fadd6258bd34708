#!/usr/bin/env python3
r"""Acquisition functions (ours: ``discretized``; botorch's others stay importable).

``__path__`` is extended with botorch's own ``botorch_community/acquisition`` folder
(see :mod:`botorch_community._path`). Importing this package (which any import of one
of its submodules does first) registers the input constructors of the discretized
acquisition functions with BoTorch, once (:mod:`.discretized_input_constructors`).
"""

from botorch_community._path import extend_with_upstream

__path__ = extend_with_upstream(__path__, __name__)

# Registers our input constructors (and imports the classes of `.discretized`).
from botorch_community.acquisition import (  # noqa: E402, F401
    discretized_input_constructors as _discretized_input_constructors,
)
