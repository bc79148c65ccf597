"""A stand-in for torchvision, used only where the real one cannot be imported.

timm 1.0.31 imports torchvision when the ``timm`` package is imported (``timm/__init__.py``
imports ``timm.layers``, ``timm.models`` and ``timm.data``, which import
``torchvision.ops.misc``, ``torchvision.transforms`` and ``torchvision.datasets`` at module
level); ``timm.optim`` itself never calls it. The CPU build of torch 2.13 has no matching
torchvision wheel on the package index (torchvision 0.28.0 is built for CUDA and fails with
"operator torchvision::nms does not exist"), so the third-party corpus puts this directory
first on ``sys.path`` when ``import torchvision.ops.misc`` fails.

Every ``torchvision.X.Y`` module is created on demand and every attribute of it is a
placeholder class. A placeholder can be named, subclassed, compared and used in
``isinstance`` (what timm does at import time), but calling or instantiating it raises, so
an optimizer that did use torchvision would fail loudly instead of running on a fake.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

__version__ = "0.0.0+optspec.stub"
__path__: list[str] = []  # a package with no directory: the finder below supplies every submodule
STUB = True


class _Placeholder(type):
    """Metaclass of the placeholders: any attribute of a placeholder is another placeholder."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")


def _refuse(self: object, *args: object, **kwargs: object) -> None:
    raise RuntimeError(
        f"{type(self).__qualname__} is a torchvision stub (optspec third-party corpus): torchvision is not installed"
    )


def _placeholder(qualname: str) -> type:
    return _Placeholder(qualname.rsplit(".", 1)[-1], (), {"__qualname__": qualname, "__init__": _refuse})


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Supplies ``torchvision.<anything>`` as a :class:`_StubModule` package."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(__name__ + "."):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
