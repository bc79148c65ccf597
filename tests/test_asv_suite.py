"""Quick checks of the asv suite's parameters and data (no benchmark is timed here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ASV_BENCH = Path(__file__).resolve().parents[1] / "asv_bench"
sys.path.insert(0, str(ASV_BENCH))

from benchmarks import optimizer_step as suite  # noqa: E402


def test_rules_come_from_the_bindings() -> None:
    from optspec.impls.optax_jax import BINDINGS as OPTAX
    from optspec.impls.torch_optim import BINDINGS as TORCH

    rules, implementations, sets, dtypes = suite._params()
    assert set(TORCH) | set(OPTAX) <= set(rules)
    assert {"sgd+momentum", "adam+amsgrad"} <= set(rules)
    assert implementations[:6] == ["torch.for-loop", "torch.foreach", "torch.fused", "torch.compile", "optax.jit", "native-cuda"]
    assert dtypes == ["float32", "bf16-fp32state"]
    assert {"flat-1M", "flat-16M", "flat-64M", "many-small", "resnet50", "gpt2-124M"} <= set(sets)


@pytest.mark.parametrize(
    ("name", "numel", "tensors"),
    [
        ("flat-1M", 1 << 20, 1),
        ("flat-16M", 1 << 24, 1),
        ("flat-64M", 1 << 26, 1),
        ("many-small", 1 << 20, 1024),
        # published parameter counts of the reference models
        ("resnet20-cifar", 269_722, 59),
        ("resnet50", 25_557_032, 161),
        ("gpt2-124M", 124_439_808, 148),
    ],
)
def test_param_sets_match_the_models(name: str, numel: int, tensors: int) -> None:
    assert suite.param_set_numel(name) == numel
    assert len(suite.param_set_tensors(name)) == tensors


def test_param_sets_file_is_what_the_generator_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ASV_BENCH / "tools"))
    import make_param_sets

    monkeypatch.setattr(make_param_sets, "OUT", tmp_path / "param_sets.json")
    make_param_sets.main()
    assert (tmp_path / "param_sets.json").read_text() == (ASV_BENCH / "benchmarks" / "param_sets.json").read_text()


def test_invalid_combinations_skip_with_a_reason() -> None:
    with pytest.raises(NotImplementedError, match="no adapter binds"):
        suite.make_bench("no-such-rule", "torch.for-loop", "flat-1M", "float32")
    if not suite.native_implementations():
        with pytest.raises(NotImplementedError, match=r"optspec\.impls\.cuda"):
            suite.make_bench("adam", "native-cuda", "flat-1M", "float32")
    with pytest.raises(NotImplementedError, match="unknown implementation"):
        suite.make_bench("adam", "mxnet", "flat-1M", "float32")


def test_native_cuda_hook_finds_the_cuda_package() -> None:
    """optspec.impls.cuda's CUDA implementation is picked up; its CPU emulation is not."""
    names = [impl.name for impl in suite.native_implementations()]
    assert all("host" not in name for name in names)
    try:
        import optspec.impls.cuda.adapter as adapter
    except ImportError:
        pytest.skip("no optspec.impls.cuda.adapter in this checkout")
    cuda = [impl.name for impl in adapter.IMPLEMENTATIONS if getattr(impl, "backend", "") == "cuda"]
    assert names[: len(cuda)] == cuda


def test_minimum_bytes_come_from_the_spec() -> None:
    prepared = suite.prepare("adam", "flat-1M", "float32")
    assert prepared.min_bytes(prepared.variant) == 28 * (1 << 20)
    prepared = suite.prepare("sgd+momentum", "flat-1M", "bf16-fp32state")
    assert prepared.min_bytes(prepared.variant) == 14 * (1 << 20)
