#!/usr/bin/env python3
from botorch_community._path import extend_with_upstream

__path__ = extend_with_upstream(__path__, __name__)
