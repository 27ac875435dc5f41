"""Answer extraction and equivalence (rewards.extract, rewards.numeric, rewards.equivalence,
rewards.symbolic), on hand-written cases and on GSM8K's real solutions and model outputs."""

from __future__ import annotations

import json
import random
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

from rewards import extract_answer, gold_answer, is_equivalent, normalize_number, parse_number, score_cot
from rewards.symbolic import SymbolicChecker
from stages.common.data import gsm8k_dir

GSM8K = gsm8k_dir()
needs_gsm8k = pytest.mark.skipif(GSM8K is None, reason="GSM8K not found (set MATHFORGE_GSM8K_DIR)")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),
        ("#### 1,000", "1,000"),
        ("So the total is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("first \\boxed{3}, on reflection \\boxed{{4}}", "{4}"),
        ("Thus, the answer is 18 dollars.", "18 dollars"),
        ("The final answer is: $\\frac{3}{4}$", "\\frac{3}{4}"),
        ("Publisher A: 5000 cents\nA: 500000", "500000"),
        ("He runs 9*60=540 meters\nA: 540", "540"),
        ("**Answer:** 42", "42"),
        ("18\n", "18"),  # program output
        ("checking...\n18.0\n", "18.0"),
        ("Total cost: 36.5", "36.5"),
        ("x = 3/4", "3/4"),
        ("(x + 1)**2", "(x + 1)**2"),
        ("Cameron will pay 1411900+20170 = 1432070 pesos for an", None),  # truncated: no final answer
        ("She makes 18 dollars every day", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text: str | None, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_gold_answer_takes_bare_answers_and_marked_solutions() -> None:
    assert gold_answer("72") == "72"
    assert gold_answer(" \\frac{3}{2} ") == "\\frac{3}{2}"
    assert gold_answer("He has 3+4=<<3+4=7>>7 apples\n#### 7") == "7"
    assert gold_answer("Job A: 2000 hours\nA: 8400") == "8400"
    assert gold_answer("") is None and gold_answer(None) is None


# ---------------------------------------------------------------------------------------------
# numbers


@pytest.mark.parametrize(
    ("text", "value", "pct"),
    [
        ("72", 72, False),
        ("-5", -5, False),
        ("$1,000.50", Fraction(2001, 2), False),
        ("18.00", 18, False),
        ("50%", 50, True),
        ("12.5\\%", Fraction(25, 2), True),
        ("\\frac{6}{4}", Fraction(3, 2), False),
        ("-\\dfrac{1}{3}", Fraction(-1, 3), False),
        ("1 1/2", Fraction(3, 2), False),
        ("1.5e+16", 15 * 10**15, False),
        ("18 dollars", 18, False),
        ("5 km/h", 5, False),
        ("18 cm^2", 18, False),
        ("1.8 billion", 1_800_000_000, False),
        ("x = 18", 18, False),
        ("\\$1{,}000", 1000, False),
        ("\\text{18 cm}", 18, False),
        ("−3", -3, False),
        ("18 apples.", 18, False),
        ("9 (apples)", 9, False),
        ("2.5 (cups of flour)", Fraction(5, 2), False),
        ("25% (of the class)", 25, True),
        ("6\\frac{1}{4}", Fraction(25, 4), False),
        ("12\u2009345", 12345, False),
        ("10\\,000", 10000, False),
    ],
)
def test_parse_number(text: str, value: Fraction | int, pct: bool) -> None:
    assert parse_number(text) == (Fraction(value), pct)


@pytest.mark.parametrize("text", ["1,5", "18 or 19", "18 or more", "3 times", "18x", "3i", "(x+1)^2", "1/0", "abc", "",
                                  "9 (or 10)", "9 (x)", "18 for the", "x^2\\frac{1}{2}"])
def test_parse_number_refuses_what_is_not_just_a_number(text: str) -> None:
    assert parse_number(text) is None


def test_normalize_number() -> None:
    assert normalize_number("$1,000.50") == "1000.5"
    assert normalize_number("50%") == "0.5"
    assert normalize_number("\\frac{6}{4}") == "1.5"
    assert normalize_number("1/3") == "1/3"
    assert normalize_number("-0.250") == "-0.25"
    assert normalize_number("seventy") is None


# ---------------------------------------------------------------------------------------------
# equivalence


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("1,000", "1000"),
        ("$18.00", "18"),
        ("18 dollars", "18"),
        ("0.30000000000000004", "0.3"),  # float noise in program output
        ("50%", "50"),  # GSM8K writes percentages without the sign
        ("50%", "0.5"),
        ("\\frac{6}{4}", "3/2"),
        ("1 1/2", "1.5"),
        ("1.8 billion", "1800000000"),
        ("1.5e+16", "15000000000000000"),
        ("Tuesday.", "tuesday"),
        ("(x+1)^2", "x^2+2x+1"),  # symbolic path
        ("\\sqrt{2}/2", "1/\\sqrt{2}"),
        ("3*6", "18"),
        ("(x+1)**2", "x^2+2x+1"),
        ("\\{1, 2\\}", "\\{2, 1\\}"),
    ],
)
def test_equivalent(pred: str, gold: str) -> None:
    assert is_equivalent(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("18", "19"),
        ("0.33", "1/3"),  # rounded is not equal
        ("1,5", "15"),
        ("18 or 19", "18"),
        ("18x", "18"),
        ("50%", "5"),
        ("(x+1)^2", "x^2+1"),
        ("10+John's age", "50"),
        ("-1.8 billion", "2"),
        ("", "5"),
        (None, "5"),
        ("5", None),
    ],
)
def test_not_equivalent(pred: str | None, gold: str | None) -> None:
    assert not is_equivalent(pred, gold)


def test_symbolic_path_works_from_a_thread() -> None:
    # math-verify's own signal.alarm timeouts fail outside the main thread; the worker process
    # must make the symbolic path work from any thread (data loaders, thread pools).
    results: list[bool] = []
    t = threading.Thread(target=lambda: results.extend([is_equivalent("(a+b)^2", "a^2+2ab+b^2"),
                                                         is_equivalent("(a+b)^2", "a^2+b^2")]))
    t.start()
    t.join(60)
    assert results == [True, False]


def test_symbolic_time_limit_is_hard() -> None:
    # 3^(10^9) is computed in C, where math-verify's alarm cannot interrupt it: only killing the
    # worker keeps the limit. The next check gets a fresh worker; the verdict is cached.
    checker = SymbolicChecker(timeout_s=0.3)
    try:
        assert checker.equivalent("\\frac{6}{4}", "3/2", timeout_s=60)  # starts the worker outside the timing
        start = time.monotonic()
        assert not checker.equivalent("3^{10^{9}}", "1")
        assert time.monotonic() - start < 1.5
        assert checker.restarts == 1
        start = time.monotonic()
        assert not checker.equivalent("3^{10^{9}}", "1")
        assert time.monotonic() - start < 0.05 and checker.restarts == 1
        assert checker.equivalent("(x+1)^2", "x^2+2x+1", timeout_s=60)  # a fresh worker
    finally:
        checker.close()


# ---------------------------------------------------------------------------------------------
# GSM8K


@needs_gsm8k
def test_gsm8k_test_solutions_match_their_own_answer_and_no_other() -> None:
    rows = _jsonl(GSM8K / "test.jsonl")
    assert len(rows) == 1319
    solutions = [r["answer"] for r in rows]
    golds = [s.split("####")[-1].strip() for s in solutions]
    assert score_cot(solutions, golds) == [True] * len(rows)

    # a shuffled gold: a random other row whose answer has a different value
    rng = random.Random(0)
    values = [normalize_number(g) for g in golds]
    assert None not in values
    others = []
    for i in range(len(rows)):
        j = rng.randrange(len(rows))
        while values[j] == values[i]:
            j = rng.randrange(len(rows))
        others.append(golds[j])
    assert not any(score_cot(solutions, others))

    # the same values dressed as models write them still match, and still only their own gold
    for i, gold in enumerate(golds):
        value = Fraction(gold.replace(",", ""))
        number = int(value) if value.denominator == 1 else float(value)
        dressed = [f"The answer is ${number:,}.", f"\\boxed{{{float(value)}}}", f"A: {number} units"]
        assert all(is_equivalent(extract_answer(d), gold) for d in dressed), (i, gold, dressed)
        assert not any(is_equivalent(extract_answer(d), others[i]) for d in dressed), (i, others[i], dressed)


@needs_gsm8k
def test_agreement_with_labelled_model_solutions_is_total() -> None:
    rows = _jsonl(GSM8K / "example_model_solutions.jsonl")
    sets = ["6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"]
    completions = [r[s]["solution"] for r in rows for s in sets]
    golds = [r["ground_truth"] for r in rows for s in sets]  # gold_answer() reads its 'A: ' line
    labels = [r[s]["is_correct"] for r in rows for s in sets]
    assert len(completions) == 5276
    verdicts = score_cot(completions, golds)
    disagreements = [(i, extract_answer(completions[i]), gold_answer(golds[i]), labels[i])
                     for i, (v, label) in enumerate(zip(verdicts, labels, strict=True)) if v != label]
    assert disagreements == []
    assert 0 < sum(labels) < len(labels)  # both classes are present, so agreement means something
