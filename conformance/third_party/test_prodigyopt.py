"""prodigyopt 1.1.2 gets the verdicts its source says (conformance/third_party/prodigyopt.toml).

Each pair runs ``optspec check`` through the CLI's ``main`` with ``--json`` and is judged as the
timm corpus is (:mod:`conformance.third_party.corpus`). Runs where prodigyopt is installed:
``tox -e third-party``.
"""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from conformance.third_party.corpus import HERE, describe, judge, load

CORPUS = load(HERE / "prodigyopt.toml")

try:
    INSTALLED = metadata.version("prodigyopt")
except metadata.PackageNotFoundError:
    pytest.skip(
        f"prodigyopt is not installed: this corpus needs prodigyopt=={CORPUS.version} (tox -e third-party)",
        allow_module_level=True,
    )
if INSTALLED != CORPUS.version:
    pytest.skip(f"the corpus's evidence is for prodigyopt {CORPUS.version}, {INSTALLED} is installed", allow_module_level=True)

pytestmark = pytest.mark.third_party


@pytest.mark.parametrize("pair", CORPUS.pairs, ids=[p.id for p in CORPUS.pairs])
def test_prodigyopt_pair(pair, tmp_path, capsys) -> None:
    from optspec.cli import main

    result_path = tmp_path / "result.json"
    try:
        exit_code = main([*pair.argv(), "--json", str(result_path)])
    except SystemExit as exc:
        exit_code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    output = captured.out + captured.err
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    problems = judge(pair, exit_code, result, output)
    assert not problems, describe(pair, exit_code, result, output, problems)
