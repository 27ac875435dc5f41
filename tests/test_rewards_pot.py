"""PoT correctness through the real sandbox: score_pot, the pot_correctness TRL reward, the shared
batch run, and the CLI's pot mode. Nothing here replaces the sandbox; ``Counting`` only counts the
batches the real one runs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from rewards import score_pot
from rewards.cli import main as cli_main
from rewards.registry import get_reward_funcs
from sandbox import Sandbox, SandboxConfig, get_sandbox
from stages.common.pot import format_completion
from stages.common.steps import split_solution


class Counting:
    """The real sandbox, with a record of each ``run_many`` batch."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[list[str]] = []

    def run_many(self, codes: list[str]) -> list[Any]:
        self.batches.append(list(codes))
        return self.inner.run_many(codes)


@pytest.fixture(scope="module")
def sandbox() -> Any:
    return get_sandbox()


CASES = [
    # (completion, gold, expected correct, expected status)
    (format_completion("eggs = 16 - 3 - 4\nprint(eggs * 2.0)"), "18", True, "ok"),  # prints 18.0
    (format_completion("total = 80000 + 50000\nprint(f'The answer is {200000 - total:,}')"), "70000", True, "ok"),
    ([{"role": "assistant", "content": format_completion("print(3 / 4)")}], "\\frac{3}{4}", True, "ok"),
    ("Let me write it.\n```python\nx = 7\nprint(x)\n", "7", True, "ok"),  # generation stopped at the fence
    (format_completion("x = 6\nassert x == 7, 'x is wrong'\nprint(x)"), "6", False, "error"),
    (format_completion("print(1 / 0)"), "1", False, "error"),
    (format_completion("print(19)"), "18", False, "ok"),
    ("The answer is 18.", "18", False, "no_code"),
    (format_completion("print(5)"), "", None, "ok"),  # unparseable gold
]


def test_score_pot_with_the_real_sandbox(sandbox: Any) -> None:
    counting = Counting(sandbox)
    scores = score_pot([c for c, *_ in CASES], [g for _, g, *_ in CASES], counting)
    assert len(counting.batches) == 1 and len(counting.batches[0]) == len(CASES) - 1  # one batch, no empty run
    for (completion, gold, correct, status), s in zip(CASES, scores, strict=True):
        assert (s.correct, s.status) == (correct, status), (completion, gold, s)
    assert scores[0].answer == "18.0" and scores[1].answer == "70,000"
    assert scores[4].error_type == "AssertionError" and scores[5].error_type == "ZeroDivisionError"
    assert scores[7].program is None and scores[8].answer == "5"
    assert scores[0].program == "eggs = 16 - 3 - 4\nprint(eggs * 2.0)"


def test_pot_correctness_reward_runs_the_batch_once(sandbox: Any) -> None:
    counting = Counting(sandbox)
    (f,) = get_reward_funcs(["pot_correctness"], sandbox=counting)
    completions = [c for c, *_ in CASES] + [CASES[0][0]] * 3  # a GRPO group repeats programs
    golds = [g for _, g, *_ in CASES] + ["18"] * 3
    logged: dict[str, Any] = {}
    out = f(["q"] * len(completions), completions, answer=golds, completion_ids=[[0]] * len(completions),
            trainer_state=None, log_metric=logged.__setitem__, log_extra=logged.__setitem__)
    assert out == [None if c is None else float(c) for _, _, c, _ in CASES] + [1.0] * 3
    assert len(counting.batches) == 1 and len(counting.batches[0]) == len(set(counting.batches[0]))
    assert logged["pot_correctness/no_code"] == pytest.approx(1 / len(completions))
    assert logged["pot_correctness/exec_error"] == pytest.approx(2 / len(completions))
    assert logged["executed_answer"][0] == "18.0"


class HalfScorer:
    def score(self, problems: list[str], solutions: list[str]) -> list[list[float]]:
        return [[0.5] * len(split_solution(s)) for s in solutions]


def test_rewards_built_together_share_one_sandbox_run(sandbox: Any) -> None:
    counting = Counting(sandbox)
    funcs = get_reward_funcs(["pot_correctness", "prm_bonus", "brevity", "kimi_length"], sandbox=counting,
                             prm_bonus={"prm": HalfScorer(), "aggregation": "product"},
                             brevity={"only_correct": True, "coef": 0.01})
    completions = [format_completion("a = 2\nb = a * 3\nprint(b)"), format_completion("print(7)")]
    kwargs = {"answer": ["6", "6"], "completion_ids": [[0] * 10, [0] * 20]}
    results = [f(["q", "q"], completions, **kwargs) for f in funcs]
    assert len(counting.batches) == 1
    assert results == [[1.0, 0.0], [pytest.approx(0.5**3), 0.0], [pytest.approx(-0.1), 0.0], [0.5, -0.5]]


def test_cli_pot_mode(tmp_path: Path, capsys) -> None:
    data = tmp_path / "pot.jsonl"
    rows = [{"completion": format_completion("print(2 + 2)"), "answer": "4"},
            {"completion": format_completion("print(2 * 3)"), "answer": "5"},
            {"completion": "no program", "answer": "4"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli_main(["check", "--jsonl", str(data), "--mode", "pot"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["correct"], summary["incorrect"]) == (1, 2)


def test_a_program_that_never_ends_is_wrong_not_stuck() -> None:
    with Sandbox(SandboxConfig(timeout_s=0.5, workers=1)) as sb:
        (s,) = score_pot([format_completion("while True:\n    pass\nprint(1)")], ["1"], sb)
    assert (s.correct, s.status) == (False, "timeout")


def test_pickled_reward_opens_the_sandbox_again(sandbox: Any) -> None:
    (f,) = get_reward_funcs(["pot_correctness"], sandbox=sandbox)
    g = pickle.loads(pickle.dumps(f))
    assert g.sandbox is None  # get_sandbox() on the next call
    assert g(["q", "q"], [format_completion("print(6 * 7)"), format_completion("print(41)")],
             answer=["42", "42"]) == [1.0, 0.0]
