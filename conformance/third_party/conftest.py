"""Make timm importable where torchvision is not (see stubs/torchvision/__init__.py).

Only when timm is installed: without it test_timm.py skips itself and nothing here runs.
"""

from __future__ import annotations

import importlib.util

from conformance.third_party.corpus import provide_torchvision

TORCHVISION_STUB = importlib.util.find_spec("timm") is not None and provide_torchvision()
