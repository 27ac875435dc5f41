"""The GSM8K annotation converter: programs with real data flow that compute the gold answer."""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
from fractions import Fraction

import pytest

from stages.synth_lib.gsm8k_pot import canonical_number, convert, evaluate, parse_equations


def run(program: str) -> str:
    """Our own generated arithmetic (no untrusted code): exec is enough for unit tests."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(program, {})
    return out.getvalue().strip().splitlines()[-1]


def assigned_names(program: str) -> list[str]:
    return [t.id for node in ast.parse(program).body if isinstance(node, ast.Assign) for t in node.targets]


NATALIA_Q = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
             "How many clips did Natalia sell altogether in April and May?")
NATALIA_S = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
             "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


def test_intermediate_result_becomes_a_variable():
    conv = convert(NATALIA_Q, NATALIA_S, "72")
    assert conv.program is not None, conv.reason
    first, second, last = conv.program.strip().splitlines()
    name = first.split(" = ")[0]
    assert first == f"{name} = 48 / 2"
    assert second.endswith(f"= 48 + {name}")  # the 24 is the variable, not a copied literal
    assert "24" not in second
    assert last == f"print({second.split(' = ')[0]})"
    assert conv.links == 1
    assert float(run(conv.program)) == 72


def test_plain_text_equations_unit_words_and_mixed_numbers():
    solution = ("They started with 124 passengers so 124-58+24 = <<124-58+24=90>>90\n"
                "There were also 10 crew members so 90+10 = 100 people on board\n"
                "7 kittens / 20 kittens * 100% = 35%\n"
                "the birds eat 2 - 1/2 = 1 1/2 cups, so 14 * 1 1/2 = 21 birds\n#### 21")
    eqs = parse_equations(solution)
    assert [e.value for e in eqs] == [90, 100, 35, Fraction(3, 2), 21]
    assert [e.annotated for e in eqs] == [True, False, False, False, False]
    conv = convert("A plane had 124 passengers; 58 got off and 24 got on.", solution, "21")
    assert conv.program is not None, conv.reason
    assert float(run(conv.program)) == 21
    # 90 from the first line feeds the second one
    lines = conv.program.splitlines()
    assert lines[1].endswith(f"= {lines[0].split(' = ')[0]} + 10")


def test_a_misread_equation_is_never_kept():
    # "1 - 1/2 = 1" is what a careless reader would take from "1 - 1/2 = 1/2"; values must match
    eqs = parse_equations("Half are boys because 1 - 1/2 = 1/2\nThe box 3 + 4 = 9 is wrong\n#### 3")
    assert [(e.tokens, e.value) for e in eqs] == [(("1", "-", "1", "/", "2"), Fraction(1, 2))]


def test_substitution_keeps_the_exact_value_and_rounds_only_when_the_text_does():
    solution = ("Each gets 10/3 = <<10/3=3.33>>3.33 dollars.\n"
                "Three of them get 3.33*3 = <<3.33*3=9.99>>9.99 dollars.\n#### 9.99")
    conv = convert("Split $10 three ways; what do three people get?", solution, "9.99")
    assert conv.program is not None
    # the variable would hold 3.333..., not the text's 3.33: the literal stays, the answer is exact
    assert conv.program.splitlines()[1].endswith("= 3.33 * 3")
    assert float(run(conv.program)) == pytest.approx(9.99)
    rounded = convert("q", "Each gets 10/3 = <<10/3=3.33>>3.33\n#### 3.33", "3.33")
    assert rounded.program is not None and "round(" in rounded.program
    assert run(rounded.program) == "3.33"


def test_names_are_valid_unique_and_never_shadow_builtins():
    solution = ("The sum is 2+3 = <<2+3=5>>5 sum\nThe sum again 5+1 = <<5+1=6>>6 sum\n"
                "print 6*2 = <<6*2=12>>12 print\n#### 12")
    conv = convert("q", solution, "12")
    names = assigned_names(conv.program)
    assert len(names) == len(set(names)) == 3
    for n in names:
        assert n.isidentifier() and not hasattr(builtins, n)
    assert float(run(conv.program)) == 12


def test_reasons_when_there_is_no_program():
    assert convert("q", "Let x be the apples.\nx=66 apples\n#### 66", "66").reason == "no equation in the solution"
    conv = convert("q", "He has 2+3 = <<2+3=5>>5 pens\n#### 7", "7")
    assert conv.program is None and conv.reason == "no equation computes the gold answer"


def test_helpers():
    assert canonical_number("1,200") == "1200" and canonical_number(".5") == "0.5" and canonical_number("007") == "7"
    assert evaluate(["(", "1", "/", "4", ")", "*", "200000"]) == 50000
    assert evaluate(["a", "*", "2"], {"a": Fraction(3, 2)}) == 3


def test_yield_on_real_gsm8k_train_sample(gsm8k_dir):
    from stages.common.data import load_problems

    problems = load_problems(str(gsm8k_dir / "train.jsonl"))[:600]
    ok = with_links = 0
    for p in problems:
        conv = convert(p["question"], p["solution"], p["answer"])
        if conv.program is None:
            continue
        assert abs(float(run(conv.program)) - float(p["answer"])) < 1e-6, (p["id"], conv.program)
        ok += 1
        with_links += conv.links > 0
    assert ok >= 0.95 * len(problems)
    assert with_links >= 0.85 * ok  # real data flow, not copied numbers
