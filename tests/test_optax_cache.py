"""Where optspec keeps JAX's persistent compilation cache (``$OPTSPEC_JAX_CACHE``)."""

from __future__ import annotations

import os

import pytest

from optspec.impls.optax_jax import CACHE_ENV, compilation_cache_dir


def test_the_default_is_under_the_user_cache_directory(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache_dir() == os.path.join(str(tmp_path), "optspec", "jax"), "default: $XDG_CACHE_HOME/optspec/jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compilation_cache_dir() == os.path.join(str(tmp_path), ".cache", "optspec", "jax"), "without XDG: ~/.cache/optspec/jax"


@pytest.mark.parametrize("value", ["off", "OFF", "0", "", "none"])
def test_the_cache_can_be_switched_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(CACHE_ENV, value)
    assert compilation_cache_dir() is None, f"{CACHE_ENV}={value!r} should mean no cache"


def test_a_directory_given_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "jax"))
    assert compilation_cache_dir() == str(tmp_path / "jax"), f"{CACHE_ENV} should name the directory"
