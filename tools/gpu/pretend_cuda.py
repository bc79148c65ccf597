"""pytest plugin for the dry run's ``--collect-only`` of conformance/test_cuda_gpu.py.

Without a GPU that module skips itself at import (``torch.cuda.is_available()`` is False), so
a plain collection on the CPU proves nothing about it. With this plugin the answer is True
during collection only, so the module's imports, the implementations it builds and every
parametrisation are collected as they will be on the device. It refuses to load for anything
but ``--collect-only``: no test may run against a pretended device.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if not config.option.collectonly:
        raise pytest.UsageError("pretend_cuda is only for --collect-only (the dry run): no test runs on a pretended GPU")
    import torch

    torch.cuda.is_available = lambda: True
