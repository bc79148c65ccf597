"""The authors' Prodigy and D-Adaptation packages get the verdicts their source says.

Corpora ``prodigyopt.toml`` (prodigyopt 1.1.2, specs/prodigy.toml) and ``dadaptation.toml``
(dadaptation 3.2, specs/dadapt_adam.toml). Each pair runs ``optspec check`` through the CLI's
``main`` with ``--json`` and is judged as the timm corpus is (:mod:`conformance.third_party.corpus`).
A corpus whose package is not installed at its version is skipped saying so; ``tox -e third-party``
installs both.
"""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from conformance.third_party.corpus import HERE, Corpus, describe, judge, load

CORPORA = [load(HERE / name) for name in ("prodigyopt.toml", "dadaptation.toml")]

pytestmark = pytest.mark.third_party


def _missing(corpus: Corpus) -> str | None:
    try:
        installed = metadata.version(corpus.library)
    except metadata.PackageNotFoundError:
        return f"{corpus.library} is not installed: this corpus needs {corpus.library}=={corpus.version} (tox -e third-party)"
    if installed != corpus.version:
        return f"the corpus's evidence is for {corpus.library} {corpus.version}, {installed} is installed"
    return None


PAIRS = [(corpus, pair) for corpus in CORPORA for pair in corpus.pairs]


@pytest.mark.parametrize(("corpus", "pair"), PAIRS, ids=[p.id for _, p in PAIRS])
def test_package_pair(corpus: Corpus, pair, tmp_path, capsys) -> None:
    reason = _missing(corpus)
    if reason is not None:
        pytest.skip(reason)
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
