"""The third-party corpus files are valid and docs/third-party.md shows their table as it is.

Needs no third-party library: the corpus is data (conformance/third_party/timm.toml); the
checks themselves run in conformance/third_party/test_timm.py (tox -e third-party).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: conformance/ is a package there

from conformance.third_party.corpus import (
    DOC,
    HERE,
    TABLE_BEGIN,
    TABLE_END,
    CorpusError,
    document_with_table,
    load,
    render_table,
)

TIMM = HERE / "timm.toml"
TIMM_RULED = {
    "Lamb",
    "Lars",
    "RAdam",
    "RAdamLegacy",
    "AdaBelief",
    "Lion",
    "NAdam",
    "NAdamW",
    "AdamW",
    "SGDW",
    "RMSpropTF",
    "Lookahead",
}


def test_doc_table_is_current() -> None:
    document = DOC.read_text()
    expected = document_with_table(document, render_table(load(TIMM)))
    assert document == expected, f"{DOC} does not show the table of {TIMM}: run python -m conformance.third_party.corpus --write"


def test_every_timm_optimizer_with_a_rule_has_a_pair() -> None:
    corpus = load(TIMM)
    covered = {p.target.split(":", 1)[1] for p in corpus.pairs}
    assert covered >= TIMM_RULED, f"timm optimizers with a rule but no pair: {sorted(TIMM_RULED - covered)}"
    assert all(p.target.startswith("timm.") for p in corpus.pairs), "every pair of timm.toml targets timm"


def test_every_pair_cites_file_and_line() -> None:
    for pair in load(TIMM).pairs:
        for line in pair.evidence:
            path = line.split(" ", 1)[0]
            assert ".py:" in path, f"pair {pair.id}: evidence {line!r} does not start with file.py:LINE"


HEAD = 'library = "x"\nversion = "1"\n'
PAIR = HEAD + '[[pair]]\nid = "a"\nrule = "r"\ntarget = "m:A"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEAD, "no [[pair]]"),
        (PAIR + 'verdict = "passes"\nevidence = ["a.py:1"]\n', "verdict"),
        (PAIR + 'verdict = "conforms"\n', "evidence"),
        (PAIR + 'verdict = "does NOT conform"\nevidence = ["a.py:1"]\n', "needs 'failing' or 'diagnosis'"),
        (PAIR + 'verdict = "conforms"\nevidence = ["a.py:1"]\nfailing = ["non_finite"]\n', "belong to 'does NOT conform'"),
        (PAIR + 'verdict = "conforms"\nevidence = ["a.py:1"]\ncolour = 1\n', "unknown field 'colour'"),
        (PAIR + 'verdict = "does NOT conform"\nevidence = ["a.py:1"]\ndiagnosis = ["("]\n', "bad regular expression"),
    ],
)
def test_bad_corpus_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CorpusError) as info:
        load(path)
    assert message in str(info.value) and str(path) in str(info.value), f"unexpected message: {info.value}"
    assert "\n" not in str(info.value), f"not one line: {info.value!r}"


def test_markers_are_in_the_doc() -> None:
    document = DOC.read_text()
    assert TABLE_BEGIN in document and TABLE_END in document, f"{DOC} lost its table markers"
