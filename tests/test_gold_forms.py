"""Gold answers that are not plain numbers (rewards.equivalence.read_gold, rewards.forms): a
labelled corpus, tests/data/gold_forms.jsonl, of gold forms from public word-problem benchmarks
(units, currency, separators, percents, fractions, mixed numbers, ratios, times, names, yes/no,
options), each with printed outputs that must be judged right, judged wrong, or (for a gold that
cannot be read) not judged at all. The same verdicts are checked on the answer-checking functions
and through the real sandbox, as the PoT reward sees them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from rewards import extract_answer, is_equivalent, is_parseable_gold, score_cot, score_pot
from rewards.equivalence import read_gold
from rewards.registry import get_reward_funcs
from rewards.scoring import warn_unreadable_golds
from sandbox import get_sandbox
from stages.common.pot import format_completion

CORPUS = Path(__file__).resolve().parent / "data" / "gold_forms.jsonl"
ROWS = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
FORMS = {"unit", "currency", "separator", "percent", "fraction", "mixed number", "ratio", "time", "name", "yes/no",
         "option", "unreadable"}


def _printed_answer(output: str) -> str | None:
    """What score_pot compares: the final answer in a program's last output line, else the line."""
    return extract_answer(output) or output.strip() or None


def _cases() -> list[tuple[str, str, bool | None]]:
    """(gold, printed output, expected verdict) for every output of every row."""
    out = []
    for row in ROWS:
        out += [(row["gold"], p, True) for p in row.get("right", [])]
        out += [(row["gold"], p, False) for p in row.get("wrong", [])]
        out += [(row["gold"], p, None) for p in row.get("unjudged", [])]
    return out


def test_corpus_covers_every_form() -> None:
    assert len(ROWS) >= 60
    assert FORMS <= {r["form"] for r in ROWS}
    assert len({r["gold"] for r in ROWS}) == len(ROWS)
    for r in ROWS:  # every readable gold has outputs judged both ways
        assert (r["kind"] is None) == ("unjudged" in r), r
        assert r["kind"] is None or (r["right"] and r["wrong"]), r


@pytest.mark.parametrize("row", ROWS, ids=[r["gold"] for r in ROWS])
def test_gold_is_read_as_its_kind(row: dict) -> None:
    gold = read_gold(row["gold"])
    assert (gold.kind if gold is not None else None) == row["kind"]
    assert is_parseable_gold(row["gold"]) is (row["kind"] is not None)


@pytest.mark.parametrize(("gold", "output", "verdict"), _cases())
def test_printed_output_verdict(gold: str, output: str, verdict: bool | None) -> None:
    answer = _printed_answer(output)
    if verdict is None:
        assert not is_equivalent(answer, gold)
        assert score_cot([f"So the answer is {output}."], [gold]) == [None]
    else:
        assert is_equivalent(answer, gold) is verdict


def test_verdicts_through_the_sandbox() -> None:
    # programs printing each output, one sandbox batch: the PoT reward's verdicts, None where the
    # gold cannot be read (left out of GRPO's group baseline, never 0)
    cases = _cases()
    completions = [format_completion(f"print({output!r})") for _, output, _ in cases]
    scores = score_pot(completions, [gold for gold, _, _ in cases], get_sandbox())
    wrong = [(gold, output, verdict, s.answer, s.correct) for (gold, output, verdict), s
             in zip(cases, scores, strict=True) if s.correct is not verdict or s.status != "ok"]
    assert wrong == []


def test_unreadable_gold_is_warned_once_per_source_with_an_example(caplog: Any) -> None:
    golds = ["18 or more", "72", "Room 101", "18 or more"]
    with caplog.at_level(logging.WARNING, logger="rewards.scoring"):
        assert warn_unreadable_golds(golds, "bench-x.jsonl") == 3
        assert warn_unreadable_golds(golds, "bench-x.jsonl") == 3  # counted again, not warned again
        assert warn_unreadable_golds(["72"], "bench-y.jsonl") == 0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "bench-x.jsonl: 3 gold answer(s) cannot be read (e.g. '18 or more')" in messages[0]


def test_reward_is_none_and_logged_for_an_unreadable_gold() -> None:
    (reward,) = get_reward_funcs(["pot_correctness"])
    logged: dict[str, float] = {}
    completions = [format_completion("print(9)"), format_completion("print(9)"), format_completion("print('Rug B')")]
    out = reward(["q"] * 3, completions, answer=["9 (apples)", "9 (or 10)", "Rug B"],
                 log_metric=logged.__setitem__)
    assert out == [1.0, None, 1.0]
    assert logged["pot_correctness/unreadable_gold"] == pytest.approx(1 / 3)
