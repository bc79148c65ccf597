"""Property: hostile whole spec files and golden files end in exit 0, 1 or 2 with one short line.

Hypothesis builds spec files (a valid rule with one to three fields replaced by hostile values,
or arbitrary text and bytes) and golden files (a real file with values replaced, with and
without a recomputed content hash, truncated, or replaced by hostile bytes) and feeds them to
the command line in-process: ``list``, ``golden`` and ``validate``-style loading of specs, and
``run`` and ``golden --check`` on golden files. Whatever the input: the exit code is 0, 1 or 2,
nothing prints a traceback, and an error is one line of at most 1000 characters. The examples
are bounded so that the whole module runs in well under a minute.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optspec.cli import main

ROOT = Path(__file__).resolve().parents[1]
SGD_GOLDEN = json.loads((ROOT / "conformance" / "golden" / "sgd.json").read_text())

SPEC: dict[str, Any] = {
    "name": "toy",
    "title": "Toy momentum",
    "references": [{"title": "A test rule"}],
    "step": ["grad: g = grad", "b = mu * b + g", "update: theta = theta - lr * b"],
    "hyper": {
        "lr": {"default": 0.1, "domain": "[0, inf)", "doc": "Learning rate."},
        "mu": {"default": 0.9, "domain": "[0, 1)", "doc": "Momentum."},
    },
    "state": {"b": {"init": "0", "doc": "Buffer."}},
    "variants": {
        "sign": {
            "default": "off",
            "values": {"off": {"doc": "Descend."}, "on": {"doc": "Ascend.", "replace": {"grad": ["grad: g = -grad"]}}},
        }
    },
    "cases": [{"id": "knobs", "comment": "A case.", "hyper": {"mu": 0.5}, "steps": 12}],
}

#: Places in a spec that hostile values go to (a path of keys and indices).
SPEC_PATHS = [
    ("name",),
    ("title",),
    ("references",),
    ("step",),
    ("step", 0),
    ("step", 2),
    ("hyper", "lr", "default"),
    ("hyper", "lr", "domain"),
    ("hyper", "mu", "domain"),
    ("hyper", "mu", "integer"),
    ("hyper", "nu"),
    ("state", "b", "init"),
    ("state", "b", "kind"),
    ("variants", "sign", "default"),
    ("variants", "sign", "values", "on", "replace", "grad"),
    ("variants", "sign", "values", "on", "before"),
    ("cases", 0, "steps"),
    ("cases", 0, "hyper"),
    ("cases", 0, "hyper", "mu"),
    ("cases", 0, "lr_multiplier"),
    ("cases", 0, "grads"),
    ("cases", 0, "zero_params"),
    ("cases", 0, "schedule"),
    ("golden",),
    ("inner",),
]

NASTY_STRINGS = [
    "[., inf)",
    "[-, 1]",
    "[0, 1e5e5]",
    "[1e-400, 1]",
    "(0, 0)",
    "[0, \u0661]",
    "theta = theta - lr * grad * 1e-400",
    "theta = theta - lr * grad * \u0661\u0662",
    "theta = theta - lr * grad" + " + grad" * 4100,
    "theta = " + "(" * 500 + "grad" + ")" * 500,
    "theta = " + "-" * 300 + "grad",
    "theta = sqrt(" * 200 + "grad" + ")" * 200,
    "@inner",
    "where(",
    "b = b ** b ** b ** b",
    "theta = theta / 0",
    "x" * 100_000,
    "line one\nline two",
    "\x00\x01",
    "inf",
    "nan",
    "",
]

hostile_scalars = st.one_of(
    st.sampled_from(NASTY_STRINGS),
    st.text(max_size=30),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([0, 1, 9, 10, 10_000, 10_001, 10**11, 2**63, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e-400, 1e999, -0.0, 5e-324]),
    st.booleans(),
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3)),
    max_leaves=6,
)


def toml_value(value: Any) -> str:
    """TOML text for a value (floats as Python writes them: nan, inf and 1e+300 are TOML too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(table: dict[str, Any]) -> str:
    """The spec as TOML: every top-level key as ``key = inline value``."""
    return "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in table.items())


def set_path(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    """Put ``value`` at ``path``, creating dictionaries on the way; a path that no longer fits is skipped."""
    node = doc
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return
    last = path[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def assert_clean(argv: tuple[str, ...], code: int, out: str, err: str) -> None:
    shown = " ".join(a[:40] for a in argv)
    assert code in (0, 1, 2), f"optspec {shown}: exit {code}; stderr {err[-2000:]!r}"
    assert "Traceback" not in out + err, f"optspec {shown}: a traceback:\n{(out + err)[-3000:]}"
    errors = [line for line in err.splitlines() if line.startswith("optspec")]
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"optspec {shown}: exit 2 with {len(lines)} lines on stderr: {err[-2000:]!r}"
        assert len(lines[0]) <= 1000, f"optspec {shown}: an error line of {len(lines[0])} characters: {lines[0][:300]!r}"
    for line in errors:
        assert len(line) <= 1000, f"optspec {shown}: an error line of {len(line)} characters: {line[:300]!r}"


spec_files = st.one_of(
    st.builds(
        lambda edits: (edits, None),
        st.lists(st.tuples(st.sampled_from(SPEC_PATHS), hostile_values), min_size=1, max_size=3),
    ),
    st.builds(lambda text: ([], text.encode("utf-8", "surrogatepass")), st.text(max_size=300)),
    st.builds(lambda data: ([], data), st.binary(max_size=300)),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec_files)
def test_hostile_spec_files(case: tuple[list[tuple[tuple[Any, ...], Any]], bytes | None]) -> None:
    edits, raw = case
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "specs" / "toy.toml"
        path.parent.mkdir()
        if raw is None:
            table = copy.deepcopy(SPEC)
            for where, value in edits:
                set_path(table, where, value)
            path.write_text(toml_document(table), encoding="utf-8", errors="surrogatepass")
        else:
            path.write_bytes(raw)
        argv = ("list", "--specs", str(path.parent), "toy")
        code, out, err = run_cli(*argv)
        assert_clean(argv, code, out, err)
        if code == 0:
            argv = ("golden", "--specs", str(path.parent), "--dir", str(Path(directory) / "golden"), "toy")
            assert_clean(argv, *run_cli(*argv))


def golden_paths(doc: Any, prefix: tuple[Any, ...] = (), depth: int = 0) -> list[tuple[Any, ...]]:
    """Every path in a golden document down to a few levels (arrays: their first two entries)."""
    paths = [prefix] if prefix else []
    if depth >= 9:
        return paths
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths += golden_paths(value, (*prefix, key), depth + 1)
    elif isinstance(doc, list):
        for index, value in enumerate(doc[:2]):
            paths += golden_paths(value, (*prefix, index), depth + 1)
    return paths


GOLDEN_PATHS = golden_paths(SGD_GOLDEN)
RAW_GOLDEN = [b"", b"[]", b'"a string"', b"null", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe\x00", b'{"a": NaN}']

golden_files = st.one_of(
    st.builds(
        lambda edits, rehash: (edits, rehash, None),
        st.lists(st.tuples(st.sampled_from(GOLDEN_PATHS), hostile_values), min_size=1, max_size=3),
        st.booleans(),
    ),
    st.builds(lambda data: ([], False, data), st.sampled_from(RAW_GOLDEN) | st.binary(max_size=200)),
    st.builds(lambda cut: ([], False, json.dumps(SGD_GOLDEN).encode()[:cut]), st.integers(0, 50_000)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(golden_files)
def test_hostile_golden_files(case: tuple[list[tuple[tuple[Any, ...], Any]], bool, bytes | None]) -> None:
    from optspec.golden import content_hash

    edits, rehash, raw = case
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "sgd.json"
        if raw is None:
            doc = copy.deepcopy(SGD_GOLDEN)
            for where, value in edits:
                set_path(doc, where, value)
            if rehash and isinstance(doc, dict):
                doc["contentSha256"] = content_hash(doc)
            path.write_text(json.dumps(doc), encoding="utf-8", errors="surrogatepass")
        else:
            path.write_bytes(raw)
        argv = ("run", "--rule", "sgd", "--impl", "optspec.cuda-host", "--dir", directory, "--quiet")
        assert_clean(argv, *run_cli(*argv))


@pytest.mark.parametrize("command", [["validate", "--sample", "0"], ["golden", "--check", "sgd"]])
def test_one_hostile_golden_file_through_validate_and_check(tmp_path: Path, command: list[str]) -> None:
    """The commands that read every golden file, on one file of each raw kind (too slow for many examples)."""
    import shutil

    golden = tmp_path / "golden"
    shutil.copytree(ROOT / "conformance" / "golden", golden)
    (golden / "sgd.json").write_bytes(b'{"format": "optspec-golden/1", "testGroups": [' + b"[" * 5000 + b"]" * 5000 + b"]}")
    argv = (*command, "--dir", str(golden))
    code, out, err = run_cli(*argv)
    assert_clean(argv, code, out, err)
    assert code in (1, 2) and "sgd.json" in err, f"optspec {' '.join(argv)} accepted a corrupt sgd.json: exit {code}, {err!r}"
