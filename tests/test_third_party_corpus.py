"""The third-party corpus: its files are valid, docs/third-party.md shows their table, and the judge of a run is right.

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
    Pair,
    describe,
    document_with_table,
    judge,
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
    "AdamWLegacy",  # timm's own older copies (rules adamw, nadam)
    "NAdamLegacy",
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


SCHEDULEFREE = HERE / "schedulefree.toml"


def test_schedulefree_doc_table_is_current() -> None:
    document = DOC.read_text()
    corpus = load(SCHEDULEFREE)
    expected = document_with_table(document, render_table(corpus), corpus.library)
    assert document == expected, (
        f"{DOC} does not show the table of {SCHEDULEFREE}: run python -m conformance.third_party.corpus --write {SCHEDULEFREE}"
    )


def test_schedulefree_corpus_covers_its_ruled_optimizers() -> None:
    corpus = load(SCHEDULEFREE)
    covered = {p.target.split(":", 1)[1] for p in corpus.pairs}
    wanted = {"SGDScheduleFree", "AdamWScheduleFree", "AdamWScheduleFreePaper", "AdamWScheduleFreeReference"}
    assert covered >= wanted, f"schedulefree optimizers with a rule but no pair: {sorted(wanted - covered)}"
    assert {p.rule for p in corpus.pairs} <= {"schedule_free_sgd", "schedule_free_adamw"}, "pairs claim the Schedule-Free rules"


def test_every_pair_cites_file_and_line() -> None:
    for pair in (*load(TIMM).pairs, *load(SCHEDULEFREE).pairs):
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


def _pair(**fields: object) -> Pair:
    base: dict[str, object] = {"id": "p", "rule": "lamb", "target": "timm.optim:Lamb", "args": (), "evidence": ("a.py:1",)}
    return Pair(**{**base, **fields})  # type: ignore[arg-type]


def _result(cases: dict[str, str], behaviour: dict[str, str] | None = None, explanation: str = "") -> dict:
    return {
        "cases": [{"case": k.split(":")[0], "dtype": k.split(":")[1], "status": v} for k, v in cases.items()],
        "behaviour": [{"name": k, "status": v, "message": f"{k} said {v}"} for k, v in (behaviour or {}).items()],
        "diagnosis": {"explanation": explanation} if explanation else None,
    }


def test_judge_tells_the_three_verdicts_apart() -> None:
    conforming = _result({"defaults:float64": "conforms"})
    deviating = _result({"defaults:float64": "deviation"})
    assert judge(_pair(verdict="conforms"), 0, conforming, "") == [], "exit 0 without deviation is 'conforms'"
    assert judge(_pair(verdict="known deviation"), 0, deviating, "") == [], "exit 0 with a deviation case is 'known deviation'"
    assert judge(_pair(verdict="conforms"), 0, deviating, ""), "a known deviation is not 'conforms'"
    assert judge(_pair(verdict="conforms"), 1, conforming, ""), "exit 1 is not 'conforms'"
    problems = judge(_pair(verdict="conforms"), 2, None, "optspec: error: unrecognized arguments: --kwarg")
    assert problems == ["verdict: expected 'conforms', got 'bad input or could not run'"], f"exit 2: {problems}"


def test_judge_checks_what_must_fail_and_the_diagnosis() -> None:
    pair = _pair(
        verdict="does NOT conform",
        failing=("non_finite",),
        cases_conform=True,
        diagnosis=("(?i)rectif",),
        messages={"non_finite": "freez"},
    )
    good = _result({"defaults:float64": "conforms"}, {"non_finite": "failed"}, "behaves like adabelief with rectify=on")
    good["behaviour"][0]["message"] = "the element freezes"
    assert judge(pair, 1, good, "") == [], "a run with the expected failures and diagnosis passes"
    bad = _result({"defaults:float64": "fails"}, {"non_finite": "passed"}, "no declared variant reproduces the target")
    problems = judge(pair, 1, bad, "")
    assert len(problems) == 4, f"each unmet expectation is reported: {problems}"
    printed = "diagnosis: behaves like adabelief with rectify=on"
    assert not any("diagnosis" in p for p in judge(pair, 1, {**good, "diagnosis": None}, printed)), "the printed line counts"
    message = describe(pair, 1, bad, "", problems)
    assert pair.command in message and "expected: does NOT conform" in message and "observed: does NOT conform" in message
