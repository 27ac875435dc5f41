"""The embedded arithmetic task: determinism, disjoint splits, reference programs, files."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common.arith import LEVELS, corpus_text, generate_problems, write_split
from stages.common.pot import SYSTEM_PROMPT

REPO = Path(__file__).resolve().parents[1]

# Runs each program of a JSON list in a fresh namespace and prints the outputs as JSON.
_RUNNER = """
import contextlib, io, json, sys
outs = []
for code in json.load(sys.stdin):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "<program>", "exec"), {"__name__": "__main__"})
    outs.append(buf.getvalue())
print(json.dumps(outs))
"""


def run_programs(programs: list[str]) -> list[str]:
    res = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(programs),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_same_seed_same_problems_other_seed_other_problems():
    a = generate_problems(60, "train", seed=3)
    assert a == generate_problems(60, "train", seed=3)
    b = generate_problems(60, "train", seed=4)
    assert [r["question"] for r in a] != [r["question"] for r in b]
    assert len({r["id"] for r in a} & {r["id"] for r in b}) < 10


def test_rows_have_the_problem_format_and_levels_in_turn():
    rows = generate_problems(40, "test", seed=0, levels=(1, 2, 3, 4))
    assert [r["level"] for r in rows] == [1, 2, 3, 4] * 10
    for r in rows:
        assert set(r) == {"id", "question", "answer", "program", "level"}
        assert re.fullmatch(rf"arith-{r['level']}-[0-9a-f]{{8}}", r["id"])
        assert re.fullmatch(r"\d+", r["answer"]), r
        assert r["question"].endswith("?")


def test_train_and_test_never_overlap_whatever_the_seeds():
    train = generate_problems(3000, "train", seed=0, levels=LEVELS)
    train += generate_problems(1000, "train", seed=1, levels=LEVELS)
    test = generate_problems(1000, "test", seed=0, levels=LEVELS)
    test += generate_problems(500, "test", seed=5, levels=LEVELS)
    # Ids come from the arithmetic itself, so a shared id would be the same computation.
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    assert not {r["question"] for r in train} & {r["question"] for r in test}


def test_no_duplicate_within_a_split():
    rows = generate_problems(3000, "train", seed=0, levels=LEVELS)
    assert len({r["question"] for r in rows}) == len(rows)
    assert len({r["id"] for r in rows}) == len(rows)


def test_reference_programs_print_the_gold_answer():
    rows = generate_problems(200, "train", seed=2, levels=LEVELS)
    rows += generate_problems(200, "test", seed=2, levels=LEVELS)
    outs = run_programs([r["program"] for r in rows])
    for r, out in zip(rows, outs, strict=True):
        assert out.strip().splitlines()[-1] == r["answer"], (r, out)


def test_level_is_the_number_of_arithmetic_operations():
    for r in generate_problems(200, "train", seed=0, levels=LEVELS):
        tree = ast.parse(r["program"])
        ops = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and not isinstance(n.op, ast.Mod)]
        assert len(ops) == r["level"], r
        last = tree.body[-1]
        assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
        assert last.value.func.id == "print"
        # every name is assigned before use: real data flow, not a literal answer
        assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        assert used - {"print"} <= assigned


def test_divisions_are_exact_and_checked():
    rows = [r for r in generate_problems(600, "train", seed=0, levels=LEVELS) if "//" in r["program"]]
    assert rows, "the task should contain divisions"
    for r in rows:
        assert "assert" in r["program"] and "% " in r["program"]
    outs = run_programs([r["program"] for r in rows])  # the asserts hold
    assert len(outs) == len(rows)


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="split"):
        generate_problems(5, "dev")
    with pytest.raises(ValueError, match="levels"):
        generate_problems(5, "train", levels=(7,))


def test_write_split_and_cli(tmp_path):
    path = write_split(tmp_path / "d" / "train.jsonl", 30, "train", seed=1)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == generate_problems(30, "train", seed=1)
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.jsonl"]

    out = tmp_path / "test.jsonl"
    res = subprocess.run([sys.executable, "-m", "stages.common.arith", "--split", "test", "--n", "12",
                          "--seed", "0", "--levels", "2,3", "-o", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == generate_problems(12, "test", seed=0, levels=(2, 3))


def test_corpus_text_has_the_prompt_and_chat_markers():
    text = corpus_text(n=50)
    assert text.count(SYSTEM_PROMPT) == 50
    assert text.count("<|im_start|>assistant\n```python\n") == 50
    assert text.count("<|im_end|>") == 150


def test_source_spec_names_levels_and_the_hard_split_never_meets_train():
    from stages.common.data import DataFormatError, load_problems

    hard_test = load_problems("arith:test:300:0:levels=4")
    assert len(hard_test) == 300 and {r["level"] for r in hard_test} == {4}
    assert all(r["id"].startswith("arith-4-") for r in hard_test)
    assert load_problems("arith:test:300:levels=4", seed=0) == hard_test  # the seed defaults to the caller's
    mixed = load_problems("arith:train:40:3:levels=3,4")
    assert [r["level"] for r in mixed] == [3, 4] * 20
    assert load_problems("arith:test:20") == generate_problems(20, "test", seed=0)  # levels 1-3 by default
    hard_train = load_problems("arith:train:2000:0:levels=4") + load_problems("arith:train:2000:1:levels=4")
    assert not {r["id"] for r in hard_train} & {r["id"] for r in hard_test}
    for bad, says in [("arith:dev:3", "split"), ("arith:test:x", "integers"), ("arith:test:3:levels=9", "subset"),
                      ("arith:test:3:size=1", "unknown option"), ("arith:test:levels=4:3", "after an option"),
                      ("arith:test:0", "at least 1")]:
        with pytest.raises(DataFormatError, match=says) as err:
            load_problems(bad)
        assert str(err.value).startswith(bad)
