"""Every schedulefree optimizer with a rule here gets the verdict its source says (conformance/third_party/schedulefree.toml).

As test_timm.py: each pair runs ``optspec check`` through the CLI's ``main`` with ``--json``
and is judged on the exit code, what must fail and the diagnosis. Runs where schedulefree
1.4.1 is installed: ``tox -e third-party``.
"""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from conformance.third_party.corpus import HERE, describe, judge, load

CORPUS = load(HERE / "schedulefree.toml")

try:
    INSTALLED = metadata.version("schedulefree")
except metadata.PackageNotFoundError:
    pytest.skip(
        f"schedulefree is not installed: the corpus needs schedulefree=={CORPUS.version} (tox -e third-party)",
        allow_module_level=True,
    )
if INSTALLED != CORPUS.version:
    pytest.skip(
        f"the corpus's evidence is for schedulefree {CORPUS.version}, schedulefree {INSTALLED} is installed",
        allow_module_level=True,
    )
import schedulefree  # noqa: E402

pytestmark = pytest.mark.third_party


def test_schedulefree_needs_train_mode() -> None:
    """The fact the check relies on: a schedulefree optimizer refuses to step until train() (sgd_schedulefree.py:111-114)."""
    import torch

    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.ones(2)
    optimizer = schedulefree.SGDScheduleFree([p], lr=0.1)
    with pytest.raises(Exception, match="train mode"):
        optimizer.step()
    optimizer.train()
    optimizer.step()
    assert bool((p != 0).all()), "after train() the step moves the parameter"


@pytest.mark.parametrize("pair", CORPUS.pairs, ids=[p.id for p in CORPUS.pairs])
def test_schedulefree_pair(pair, tmp_path, capsys) -> None:
    from optspec.cli import main

    result_path = tmp_path / "result.json"
    try:
        exit_code = main([*pair.argv(), "--json", str(result_path), "--quiet"])
    except SystemExit as exc:
        exit_code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    output = captured.out + captured.err
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    problems = judge(pair, exit_code, result, output)
    assert not problems, describe(pair, exit_code, result, output, problems)
