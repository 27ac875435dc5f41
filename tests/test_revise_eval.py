"""eval's pass@1 with repair (eval/repair.py) without a model: what the loop attempted, fixed and
broke, judged by the gold only afterwards; best-of-(1+R) by the same verifier, all samples and at
the repair's token budget; the run report's repair table; the --repair options refused before
anything loads. Generation is scripted; the sandbox is real."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from eval import repair as eval_repair
from stages.common.pot import extract_program, format_completion
from stages.revise_lib import repair as loop
from stages.revise_lib.repair import RepairOptions


class WordTokenizer:
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + "<assistant>\n"

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}


class StepScorer:
    def score_steps(self, questions, steps):
        return [[0.1 if "BAD" in s else 0.9 for s in st] for st in steps]


QUESTIONS = {"right": "Q right", "fixable": "Q fixable", "fragile": "Q fragile", "silent": "Q silent"}
GREEDY = {
    "right": ("a = 2\nprint(a * 3)", "6", True),
    "fixable": ("a = 6\nb = 0\nc = a / b\nprint(c)", "3", False),       # raises: the sandbox flags it
    "fragile": ("a = 4  # BAD\nprint(a + 1)", "5", True),             # right, but the PRM flags step 1
    "silent": ("a = 4\nprint(a + 2)", "7", False),                    # wrong, and nothing flags it
}
REVISIONS = {"fixable": "c = a / 2\nprint(c)\n```", "fragile": "a = 9\nprint(a + 1)\n```"}
SAMPLES = {"fixable": ["```python\nprint(3)\n```", "```python\nx = 1\ny = 2\nz = 3\nw = 4\nprint(3 * x)\n```"],
           "fragile": ["```python\nprint(5)  # BAD\n```", "```python\nprint(7)  # BAD\n```"]}


def _rows():
    return [{"id": k, "question": QUESTIONS[k], "answer": gold, "completion": format_completion(code),
             "correct": correct} for k, (code, gold, correct) in GREEDY.items()]


@pytest.fixture
def scripted(monkeypatch):
    by_question = {q: k for k, q in QUESTIONS.items()}

    def key_of(prompt):
        return next(k for q, k in by_question.items() if q in prompt)

    def revise(model, tokenizer, prompts, *, num_return_sequences=1, **kw):
        return [[REVISIONS[key_of(p)]] * num_return_sequences for p in prompts]

    def sample(model, tokenizer, prompts, *, num_return_sequences=1, **kw):
        return [SAMPLES[key_of(p)][:num_return_sequences] for p in prompts]

    monkeypatch.setattr(loop, "generate", revise)
    monkeypatch.setattr(eval_repair, "generate", sample)
    monkeypatch.setattr(eval_repair, "chat_prompts", lambda tok, questions: list(questions))


def test_repair_eval_counts_fixes_and_breaks_judged_by_the_gold_afterwards(scripted, monkeypatch):
    seen = []
    real = loop.repair
    monkeypatch.setattr(loop, "repair", lambda policy, items, *a, **k: seen.extend(items) or real(policy, items, *a,
                                                                                                   **k))
    rows = _rows()
    policy = SimpleNamespace(model=None, tokenizer=WordTokenizer())
    m = eval_repair.repair_eval(policy, rows, loop, RepairOptions(rounds=2, threshold=0.5), scorer=StepScorer())
    assert all(set(item) == {"id", "question", "completion"} for item in seen)  # no gold reaches the loop
    assert m["verifier"] == "prm+sandbox" and m["n"] == 4 and m["pass@1_before"] == 0.5
    assert (m["attempted"], m["attempted_right"], m["attempted_wrong"], m["wrong_not_flagged"]) == (2, 1, 1, 1)
    assert (m["fixed"], m["broken"], m["pass@1"], m["delta"]) == (1, 1, 0.5, 0.0)
    assert m["fix_rate"] == 0.5 and m["break_rate"] == 0.5
    # words of the two revisions (7 each) over four problems
    assert m["extra_tokens_per_problem"] == pytest.approx(14 / 4)
    by_id = {r["id"]: r for r in rows}
    assert by_id["fixable"]["repair"]["correct"] and by_id["fixable"]["repair"]["stop"] == "verified"
    assert not by_id["fragile"]["repair"]["correct"] and by_id["fragile"]["repair"]["flag"]["kind"] == "low_score"
    assert by_id["right"]["repair"] == {**by_id["right"]["repair"], "attempted": False, "rounds": []}
    # best-of-(1+2): 'fixable' takes its first sample (it runs); 'fragile' keeps its greedy answer (the
    # samples rank no higher); at the repair's budget (7 words each) 3 + 5 words of samples fit
    assert m["best_of"]["n"] == 3 and (m["best_of"]["fixed"], m["best_of"]["broken"]) == (1, 0)
    assert m["best_of"]["extra_tokens_per_problem"] == pytest.approx((3 + 17 + 5 + 5) / 4)
    assert m["best_of_same_budget"]["fixed"] == 1
    assert m["best_of_same_budget"]["extra_tokens_per_problem"] == pytest.approx((3 + 5) / 4)
    assert by_id["fixable"]["repair"]["best_of_same_budget_correct"] is True
    line = eval_repair.summary_line(m)
    assert "pass@1_repair=0.500 (from 0.500; prm+sandbox" in line and "fixed 1, broke 1" in line


def test_repair_eval_without_a_prm_uses_the_sandbox_signal_alone(scripted):
    rows = _rows()
    m = eval_repair.repair_eval(SimpleNamespace(model=None, tokenizer=WordTokenizer()), rows, loop,
                                RepairOptions(rounds=2, threshold=0.5), scorer=None, baseline=False)
    # only the program that raised is revised; the PRM's flag on 'fragile' does not exist here
    assert m["verifier"] == "sandbox" and m["threshold"] is None and m["attempted"] == 1
    assert (m["fixed"], m["broken"], m["pass@1"]) == (1, 0, 0.75) and "best_of" not in m
    assert "sandbox signal only, no PRM" in eval_repair.summary_line(m)


def test_sets_share_one_loop_and_keep_their_own_metrics(scripted, monkeypatch):
    calls = []
    real = loop.generate
    monkeypatch.setattr(loop, "generate", lambda m, t, prompts, **k: calls.append(len(prompts)) or real(m, t, prompts,
                                                                                                      **k))
    rows = _rows()
    first, second = rows[:2], rows[2:]  # right + fixable, fragile + silent
    policy = SimpleNamespace(model=None, tokenizer=WordTokenizer())
    options = RepairOptions(rounds=2, threshold=0.5)
    m1, m2 = eval_repair.repair_eval_sets(policy, [first, second], loop, options, scorer=StepScorer())
    assert calls[0] == 2  # round 1: the flagged answers of both sets in one batch
    assert (m1["n"], m1["attempted"], m1["fixed"], m1["broken"], m1["pass@1"]) == (2, 1, 1, 0, 1.0)
    assert (m2["n"], m2["attempted"], m2["fixed"], m2["broken"], m2["pass@1"]) == (2, 1, 0, 1, 0.0)
    assert m1["sets_in_loop"] == m2["sets_in_loop"] == 2 and m1["wall_s"] == m2["wall_s"]
    assert (m1["best_of"]["fixed"], m2["best_of"]["fixed"], m2["best_of"]["broken"]) == (1, 0, 0)
    # the same figures as each set alone
    alone = eval_repair.repair_eval(policy, _rows()[2:], loop, options, scorer=StepScorer())
    assert {k: alone[k] for k in ("attempted", "fixed", "broken", "pass@1", "extra_tokens_per_problem")} == \
        {k: m2[k] for k in ("attempted", "fixed", "broken", "pass@1", "extra_tokens_per_problem")}
    assert alone["best_of"] == m2["best_of"]


def test_outcome_counts():
    out = eval_repair.outcome([True, True, False, False], [True, False, True, True], [0, 4, 8, 0])
    assert (out["fixed"], out["broken"], out["pass@1"], out["delta"]) == (2, 1, 0.75, 0.25)
    assert out["break_rate"] == 0.5 and out["fix_rate"] == 1.0 and out["extra_tokens_per_problem"] == 3.0


def test_report_shows_repair_beside_plain_pass_at_1(tmp_path: Path):
    from eval.report import Checkpoint, repair_rows

    m = {"attempted": 5, "fixed": 3, "broken": 0, "pass@1": 0.7, "pass@1_before": 0.6, "rounds": 3,
         "verifier": "prm+sandbox", "extra_tokens_per_problem": 4.0,
         "best_of": {"pass@1": 0.65, "extra_tokens_per_problem": 30.0},
         "best_of_same_budget": {"pass@1": 0.61, "extra_tokens_per_problem": 3.5}}
    evals = [{"sets": {"arith:hard": {"pot": {"pass@1": 0.6, "repair": m}}, "arith:test": {"pot": {"pass@1": 0.9}}}}]
    ckpt = Checkpoint(tmp_path, {"stage": "revise", "version": 1}, evals=evals)
    (row,) = repair_rows([ckpt])
    assert row["checkpoint"] == "revise/v1" and row["set"] == "arith:hard"
    assert (row["pass@1"], row["pass@1 repair"], row["fixed"], row["broken"]) == (0.6, 0.7, 3, 0)
    assert row["best-of-(1+R)"] == 0.65 and row["best-of same budget tokens"] == 3.5
    json.dumps(row)


@pytest.mark.parametrize(("argv", "message"), [
    (["--prm", "x"], "needs --samples K with K >= 2, or --repair"),
    (["--repair", "--repair_sets", "gsm8k:test"], "--repair_sets ['gsm8k:test'] are not among eval_sets"),
    (["--repair", "--repair_prompt", "chat"], "--repair: prompt must be one of"),
    (["--repair", "--repair_rounds", "0"], "rounds must be >= 1"),
    (["--repair", "--repair_batch_size", "0"], "--repair_batch_size must be >= 1, got 0"),
    (["--repair", "--task", "cot"], "--repair repairs PoT programs"),
])
def test_bad_repair_options_are_refused_before_loading(argv, message):
    from eval.gsm8k import parse_args

    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_args(["--model", "m", "--eval_sets", "arith:test:3", *argv])


def test_repair_batch_size_reaches_the_loop_and_defaults_to_batch_size():
    from eval.gsm8k import parse_args, repair_options
    from stages.revise_lib import repair as loop

    base = ["--model", "m", "--eval_sets", "arith:test:3", "--repair", "--batch_size", "100"]
    assert repair_options(parse_args(base), loop).batch_size == 100
    assert repair_options(parse_args([*base, "--repair_batch_size", "40"]), loop).batch_size == 40


def test_the_loop_reuses_the_sandbox_runs_of_evals_judge(scripted):
    from rewards import ExecMemo
    from rewards.scoring import get_sandbox

    class CountingSandbox:
        def __init__(self):
            self.ran = []

        def run_many(self, programs):
            self.ran.extend(programs)
            return get_sandbox().run_many(programs)

    sandbox, memo = CountingSandbox(), ExecMemo(keep_all=True)
    rows = _rows()
    programs = [extract_program(r["completion"]) for r in rows]
    memo.run(sandbox, programs[:2])  # eval's judge, one set
    memo.run(sandbox, programs[2:])  # and the next: keep_all keeps both batches
    assert sandbox.ran == programs
    items = [{"id": r["id"], "question": r["question"], "completion": r["completion"]} for r in rows]
    policy = SimpleNamespace(model=None, tokenizer=WordTokenizer())
    records = loop.repair(policy, items, RepairOptions(rounds=1, threshold=None), sandbox=sandbox, memo=memo)
    # the greedy programs ran once, in the judge; only the revision of the one that raised runs now
    assert sandbox.ran[:4] == programs and len(sandbox.ran) == 5 and "a / 2" in sandbox.ran[4]
    assert records[1]["flag"]["kind"] == "error" and records[1]["flag"]["step"] == 3  # the cached traceback
    assert records[1]["final_check"]["answer"] == "3.0"
    memo.clear()
    loop.repair(policy, items[:1], RepairOptions(rounds=1, threshold=None), sandbox=sandbox, memo=memo)
    assert len(sandbox.ran) == 6  # cleared: the program runs again


def test_the_comparison_reuses_the_loops_runs_and_scores(scripted, monkeypatch):
    """Eval with repair runs each distinct program once and the PRM scores each distinct (question,
    steps) once: the greedy answers the loop verified and the finals it chose are not verified again by
    the best-of comparison or the gold's judging."""
    import rewards.scoring
    from rewards import ExecMemo

    real_sandbox = rewards.scoring.get_sandbox()

    class CountingSandbox:
        def __init__(self):
            self.ran = []

        def run_many(self, programs):
            self.ran.extend(programs)
            return real_sandbox.run_many(programs)

    class CountingScorer(StepScorer):
        def __init__(self):
            self.scored = []

        def score_steps(self, questions, steps):
            self.scored.extend(zip(questions, map(tuple, steps), strict=True))
            return super().score_steps(questions, steps)

    sandbox, scorer = CountingSandbox(), CountingScorer()
    monkeypatch.setattr(rewards.scoring, "get_sandbox", lambda: sandbox)
    rows = _rows()
    m = eval_repair.repair_eval_sets(SimpleNamespace(model=None, tokenizer=WordTokenizer()), [rows], loop,
                                     RepairOptions(rounds=2, threshold=0.5), scorer=scorer,
                                     memo=ExecMemo(keep_all=True))[0]
    assert (m["fixed"], m["broken"], m["best_of"]["fixed"]) == (1, 1, 1)  # the figures of the first test
    assert len(sandbox.ran) == len(set(sandbox.ran)) >= 4 + 2 + 4  # greedy, revisions, samples
    assert len(scorer.scored) == len(set(scorer.scored)) >= 4 + 2 + 4


def test_a_shared_verifier_must_match_the_loops_options():
    policy = SimpleNamespace(model=None, tokenizer=WordTokenizer())
    item = [{"id": "right", "question": QUESTIONS["right"], "completion": format_completion(GREEDY["right"][0])}]
    verifier = loop.Verifier(policy.tokenizer, StepScorer(), grounding=True)
    with pytest.raises(ValueError, match="other grounding or aggregation"):
        loop.repair(policy, item, RepairOptions(rounds=1, grounding=False), verifier=verifier)
    with pytest.raises(ValueError, match="other grounding or aggregation"):
        loop.repair(policy, item, RepairOptions(rounds=1, grounding=True, aggregation="last"), verifier=verifier)
    record = loop.repair(policy, item, RepairOptions(rounds=1, grounding=True), verifier=verifier)[0]
    assert record["attempted"] is False and record["stop"] == "not_flagged"


def test_the_comparison_takes_its_samples_from_the_loops_whole_program_rounds(scripted, monkeypatch):
    """A round that rewrites the whole program under the prefill prompt samples the plain PoT prompt:
    the comparison takes its R samples from those candidates and draws only what is missing."""
    drawn = []
    real = eval_repair.generate
    monkeypatch.setattr(eval_repair, "generate", lambda m, t, prompts, **k: drawn.append((list(prompts), k))
                        or real(m, t, prompts, **k))
    policy = SimpleNamespace(model=None, tokenizer=WordTokenizer())
    # 'fragile' is flagged at its first step (the PRM): its one round rewrites the whole program, 2 candidates;
    # 'fixable' raises at step 3: its round keeps steps 1-2, so it has no plain sample
    options = RepairOptions(rounds=2, threshold=0.5, prompt="prefill", candidates=2, temperature=0.7)
    rows = _rows()
    m = eval_repair.repair_eval(policy, rows, loop, options, scorer=StepScorer(), baseline_temperature=0.7)
    by_id = {r["id"]: r for r in rows}
    assert by_id["fragile"]["repair"]["rounds"][0]["kept_steps"] == 0
    assert by_id["fragile"]["repair"]["best_of_reused_samples"] == 2
    assert by_id["fixable"]["repair"]["best_of_reused_samples"] == 0
    assert m["best_of"]["samples_from_loop"] == 2
    # one draw, for 'fixable' alone, of its two samples
    assert [(prompts, k["num_return_sequences"]) for prompts, k in drawn] == [([QUESTIONS["fixable"]], 2)]
    # the reused candidates are the loop's revision: 'fragile' is right with it, as with repair
    assert by_id["fragile"]["repair"]["best_of_correct"] is False  # a = 9 prints 10, the gold is 5
    # at another temperature the loop's candidates are not the comparison's draws: nothing is reused
    drawn.clear()
    rows = _rows()
    m = eval_repair.repair_eval(policy, rows, loop, options, scorer=StepScorer(), baseline_temperature=1.0)
    assert m["best_of"]["samples_from_loop"] == 0
    assert sorted(p for prompts, _ in drawn for p in prompts) == [QUESTIONS["fixable"], QUESTIONS["fragile"]]
