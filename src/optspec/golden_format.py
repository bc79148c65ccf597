"""What every golden file shares, whatever the spec kind: the file layer under :mod:`optspec.golden`.

Arrays are stored bit-exactly as base64 of little-endian IEEE-754 binary64
(:func:`encode_array`, :func:`decode_array`); a ``contentSha256`` over the canonical JSON of
the rest of the document (:func:`content_hash`) detects corruption and careless edits;
files are read with limits (:func:`load_json`: depth, NaN, overflowing numbers, encoding),
checked against a JSON schema (:func:`schema_error`) and written atomically
(:func:`write_atomic`). Every failure is a one-line :class:`~optspec.errors.GoldenError`.
Rule golden files (:mod:`optspec.golden`) and schedule golden files
(:mod:`optspec.schedule_golden`) are both built from these pieces.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from optspec.declarations import SpecDeclarations, shorten, variant_label
from optspec.errors import GoldenError

_JSONSCHEMA_VERSION = importlib.metadata.version("jsonschema")


def test_name(spec: SpecDeclarations, variant: Mapping[str, str], case: str) -> str:
    """The stable id of a golden test: ``<spec>/<non-default knobs or 'default'>/<case>``."""
    changed = {k: v for k, v in variant.items() if spec.knobs[k].default != v}
    return f"{spec.name}/{variant_label(changed) if changed else 'default'}/{case}"


def encode_array(array: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(array, dtype="<f8").tobytes()
    return {"shape": list(np.shape(array)), "data": base64.b64encode(data).decode("ascii")}


def decode_array(obj: Mapping[str, Any], where: str) -> np.ndarray:
    """A stored array; wrong length, a bad base64 string or a NaN/inf element is a GoldenError.

    The reference refuses to write non-finite values (its trajectories and inputs are
    checked when generated), so a non-finite element can only come from an edit.
    """
    shape = tuple(obj["shape"])
    try:
        raw = base64.b64decode(obj["data"], validate=True)
    except (ValueError, TypeError) as exc:
        raise GoldenError(f"{where}: array data is not valid base64 ({exc})") from None
    count = math.prod(shape)
    if len(raw) != 8 * count:
        raise GoldenError(f"{where}: array of shape {list(shape)[:8]} needs {8 * count} bytes, found {len(raw)}")
    array = np.frombuffer(raw, dtype="<f8").reshape(shape).astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise GoldenError(f"{where}: holds a NaN or infinite value, which the reference never writes")
    return array


def content_hash(doc: Mapping[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "contentSha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file in the same directory and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: Golden files nest about ten levels deep; anything much deeper is refused before decoding
#: (the decoder recurses once per level).
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class _BadNumber(ValueError):
    pass


def _json_constant(name: str) -> float:
    raise _BadNumber(f"{name} is not a JSON number (golden values and budgets are finite)")


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"the number {text[:40]} overflows binary64")
    return value


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > 18:
        raise _BadNumber(f"the integer {text[:40]}... has {len(text)} digits")
    return int(text)


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in a JSON text (strings skipped), without recursing."""
    depth = deepest = 0
    for char in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if char in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def load_json(path: Path, shown: str, what: str = "golden file") -> Any:
    """Read and decode a JSON file; every failure (missing, unreadable, not UTF-8, nested too
    deeply, not JSON, NaN, Infinity, a number binary64 cannot hold) is a one-line GoldenError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GoldenError(f"{shown}: {what} is missing; run `optspec golden` to generate it") from None
    except OSError as exc:
        raise GoldenError(f"{shown}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GoldenError(f"{shown}: the {what} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})") from None
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise GoldenError(f"{shown}: not a {what}: JSON nested {depth} levels deep (at most {MAX_JSON_DEPTH})")
    try:
        return json.loads(text, parse_constant=_json_constant, parse_float=_json_float, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise GoldenError(f"{shown}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except _BadNumber as exc:
        raise GoldenError(f"{shown}: not a valid {what}: {exc}") from None
    except RecursionError:
        raise GoldenError(f"{shown}: not a {what}: JSON nested too deeply") from None


#: ``$OPTSPEC_SCHEMA_CACHE``: where :func:`schema_error` remembers documents that matched their
#: schema (``off`` or an empty value: nowhere); default ``$XDG_CACHE_HOME/optspec/schema-matched``.
SCHEMA_CACHE_ENV = "OPTSPEC_SCHEMA_CACHE"


def user_cache_dir(env: str, name: str) -> Path | None:
    """A directory of optspec's records: ``$env`` when set (``off``, ``0``, ``none`` or empty:
    None, no record kept), else ``$XDG_CACHE_HOME/optspec/<name>`` (``~/.cache/optspec/<name>``)."""
    value = os.environ.get(env)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "optspec" / name


def schema_cache_dir() -> Path | None:
    """The directory of :func:`schema_error`'s record of matched documents (None: none kept)."""
    return user_cache_dir(SCHEMA_CACHE_ENV, "schema-matched")


def _match_key(doc: Any, schema: Mapping[str, Any]) -> str | None:
    """sha256 of the validator's version, the schema and the document (canonical JSON); None
    for a document JSON cannot write canonically (it is validated every time)."""
    try:
        canonical = [json.dumps(x, sort_keys=True, separators=(",", ":"), allow_nan=False) for x in (schema, doc)]
    except (TypeError, ValueError, RecursionError):
        return None
    digest = hashlib.sha256(f"jsonschema {_JSONSCHEMA_VERSION}\n".encode())
    for text in canonical:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()


def schema_error(doc: Any, schema: Mapping[str, Any], shown: str, name: str) -> GoldenError | None:
    """The best-matching schema violation as a one-line GoldenError (None when ``doc`` matches).

    Validation is a pure function of the document, the schema and jsonschema's version, and
    about a quarter of a second per golden file (ten seconds for every rule's): a match is
    remembered as an empty file named by the sha256 of those three (:func:`schema_cache_dir`),
    and a document whose key is there is not validated again. Only matches are remembered, so
    every violation is found, and reported, afresh; a cache that cannot be read or written
    changes nothing but the time.
    """
    directory = schema_cache_dir()
    key = _match_key(doc, schema) if directory is not None else None
    if key is not None and (directory / key).is_file():
        return None
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    if error is None:
        if key is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                (directory / key).touch()
            except OSError:
                pass
        return None
    where = shorten("/".join(str(p) for p in error.absolute_path) or "(top level)", 120)
    return GoldenError(f"{shown}: does not match {name} at {where}: {shorten(error.message, 200)}")
