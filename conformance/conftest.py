"""Shared fixtures of the conformance suite: the spec library and the golden vectors.

Collection reads ``conformance/golden`` beside this file (the repository's vectors, which
``optspec golden --check`` keeps current); a corrupt or stale file fails collection with
the one-line GoldenError that names it.
"""

from __future__ import annotations

from pathlib import Path

GOLDEN_DIR = Path(__file__).parent / "golden"
