"""Every timm optimizer with a rule here gets the verdict its source says (conformance/third_party/timm.toml).

Each pair runs ``optspec check`` through the CLI's ``main`` with ``--json`` and is judged on
the exit code (the verdict), the cases and behavioural checks that timm's source says must
fail, and the diagnosis. The expected verdicts and their evidence (file:line in timm 1.0.31
and torch) are in the corpus file and docs/third-party.md. Runs where timm is installed:
``tox -e third-party``.
"""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from conformance.third_party.conftest import TORCHVISION_STUB
from conformance.third_party.corpus import HERE, describe, judge, load

CORPUS = load(HERE / "timm.toml")

try:
    INSTALLED = metadata.version("timm")
except metadata.PackageNotFoundError:
    pytest.skip(
        f"timm is not installed: the third-party corpus needs timm=={CORPUS.version} (tox -e third-party)",
        allow_module_level=True,
    )
if INSTALLED != CORPUS.version:
    pytest.skip(
        f"the corpus's evidence is for timm {CORPUS.version}, timm {INSTALLED} is installed",
        allow_module_level=True,
    )
# Installed: importing it must work (a failure here is an error, not a skip).
import timm.optim  # noqa: E402

pytestmark = pytest.mark.third_party


def test_timm_imports_without_torchvision_calls() -> None:
    assert timm.optim.Lamb.__module__ == "timm.optim.lamb", f"timm.optim.Lamb comes from {timm.optim.Lamb.__module__}"
    if TORCHVISION_STUB:
        import torchvision

        assert getattr(torchvision, "STUB", False), "the torchvision stand-in should be the one imported"


@pytest.mark.parametrize("pair", CORPUS.pairs, ids=[p.id for p in CORPUS.pairs])
def test_timm_pair(pair, tmp_path, capsys) -> None:
    from optspec.cli import main

    result_path = tmp_path / "result.json"
    try:
        exit_code = main([*pair.argv(), "--json", str(result_path)])
    except SystemExit as exc:  # argparse rejects an option this optspec does not have yet
        exit_code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    output = captured.out + captured.err
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    problems = judge(pair, exit_code, result, output)
    assert not problems, describe(pair, exit_code, result, output, problems)
