"""The revision loop (stages.revise_lib.repair) without a model: step flagging (traceback lines
mapped to steps, PRM thresholds, the lowest step), prompts with numbered steps and the kept steps
prefilled, the growth margin, the stop rules and repeat detection. Generation is scripted; the
sandbox is real."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from stages.common.pot import format_completion
from stages.common.steps import split_program
from stages.revise_lib import repair as loop
from stages.revise_lib.repair import (
    Flag,
    RepairOptions,
    Verification,
    Verifier,
    feedback_request,
    flag_step,
    growth_limit,
    kept_prefix,
    revision_prompt,
    step_of_line,
    step_spans,
    traceback_line,
)


class WordTokenizer:
    """A stand-in tokenizer: one token per whitespace-separated word; a plain-text chat template."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        text = "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages)
        return text + ("<assistant>\n" if add_generation_prompt else "")

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}


class StepScorer:
    """A stand-in PRM: a step holding 'BAD' scores 0.1, others 0.9; counts its calls."""

    def __init__(self):
        self.calls = 0

    def score_steps(self, questions, steps):
        self.calls += 1
        return [[0.1 if "BAD" in s else 0.9 for s in st] for st in steps]


def _verify(code: str, scorer=None) -> Verification:
    (v,) = Verifier(WordTokenizer(), scorer).verify(["q"], [format_completion(code)])
    return v


PROGRAM = "a = 6\nb = 0\n# the share\nc = a / b\nfor i in range(2):\n    c += i\nprint(c)"


def test_steps_have_line_spans_and_a_traceback_line_maps_to_its_step():
    steps = split_program(PROGRAM)
    assert steps == ["a = 6", "b = 0", "# the share\nc = a / b", "for i in range(2):\n    c += i", "print(c)"]
    spans = step_spans(PROGRAM, steps)
    assert spans == [(1, 1), (2, 2), (3, 4), (5, 6), (7, 7)]
    assert [step_of_line(spans, n) for n in (1, 3, 4, 6, 7, 99)] == [0, 2, 2, 3, 4, 4]
    v = _verify(PROGRAM)
    assert v.status == "error" and v.error_line == 4 and v.error_step == 2
    assert v.error == "ZeroDivisionError: division by zero"
    # a raise inside a loop body maps to the loop's step; a SyntaxError names its line too
    assert _verify("a = 1\nfor i in range(3):\n    a = a / (i - 1)\nprint(a)").error_step == 1
    bad = _verify("a = 1\nb = (a +\nprint(b)")
    assert bad.error_type == "SyntaxError" and traceback_line("x") is None
    assert flag_step(bad, None).kind == "error"


def test_flag_prefers_the_earliest_of_a_low_step_and_the_raising_step():
    scorer = StepScorer()
    # the PRM flags step 2, the program raises at step 3: revise from step 2, both reasons given
    v = _verify("a = 6\nb = 0  # BAD\nc = a / b\nprint(c)", scorer)
    flag = flag_step(v, 0.5)
    assert flag.step == 1 and flag.kind == "low_score"
    assert flag.reason == "Step 2 scored 0.10 by the verifier; step 3 raised ZeroDivisionError: division by zero"
    # without a threshold the PRM only ranks: the raising step is flagged
    assert flag_step(v, None).step == 2
    # a program that runs with every step above the threshold passes; forced, its lowest step is revised
    ok = _verify("a = 6\nb = 2\nprint(a * b)", scorer)
    assert ok.runs and flag_step(ok, 0.5) is None
    low = _verify("a = 6\nb = 2  # BAD\nprint(a * b)", scorer)
    assert flag_step(low, 0.05) is None
    forced = flag_step(low, 0.05, force=True)
    assert forced.step == 1 and forced.kind == "lowest" and "lowest score (0.10)" in forced.reason
    # without scores a forced program is rewritten whole
    assert flag_step(_verify("print(3)"), None, force=True).step == 0


def test_flags_without_a_traceback_line():
    no_program = Verifier(WordTokenizer()).verify(["q"], ["I think it is 4."])[0]
    assert flag_step(no_program, 0.5) == Flag(0, "The answer has no ```python block", "no_program")
    silent = _verify("a = 1\nb = a + 1")
    assert silent.status == "ok" and silent.answer is None
    assert flag_step(silent, None) == Flag(1, "The program printed no answer", "no_answer")
    hang = Verification("while True:\n    pass", ["while True:\n    pass"], [(1, 2)], "timeout", "Timeout")
    assert flag_step(hang, None).kind == "timeout" and "did not finish in time" in flag_step(hang, None).reason


def test_revision_prompt_numbers_the_steps_and_prefills_the_kept_ones():
    v = _verify(PROGRAM)
    flag = flag_step(v, None)
    request = feedback_request("Share 6 apples.", v.steps, flag)
    assert "# step 1\na = 6\n# step 2\nb = 0\n# step 3\n# the share\nc = a / b\n# step 4" in request
    assert request.endswith("Step 3 raised ZeroDivisionError: division by zero. Rewrite the program from step 3 on, "
                            "keeping steps 1 to 2 as they are.")
    prompt = revision_prompt(WordTokenizer(), "Share 6 apples.", v.steps, flag, "feedback")
    assert prompt.endswith("<assistant>\n```python\na = 6\nb = 0\n")
    plain = revision_prompt(WordTokenizer(), "Share 6 apples.", v.steps, flag, "prefill")
    assert "numbered steps" not in plain and plain.endswith("<user>\nShare 6 apples.\n<assistant>\n```python\na = 6\n"
                                                             "b = 0\n")
    assert kept_prefix(v.steps, Flag(0, "r", "error")) == "```python\n"
    assert "Rewrite the whole program." in feedback_request("q", v.steps, Flag(0, "Step 1 raised X", "error"))


def test_growth_limit():
    opts = RepairOptions(max_growth=0.5, growth_slack=4, max_new_tokens=99)
    assert growth_limit(10, opts) == 19 and growth_limit(0, opts) == 99 and growth_limit(None, opts) == 99


def test_options_are_checked():
    with pytest.raises(ValueError, match="prompt must be one of"):
        RepairOptions(prompt="chat").check()
    with pytest.raises(ValueError, match="candidates > 1 needs temperature > 0"):
        RepairOptions(candidates=2).check()
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        RepairOptions(rounds=0).check()


def _scripted(monkeypatch, script):
    """Replace generation: ``script(prompt) -> continuation`` (after the prefill); records prompts."""
    seen = []

    def fake_generate(model, tokenizer, prompts, *, num_return_sequences=1, **kw):
        seen.append({"prompts": list(prompts), **kw})
        return [[script(p) for _ in range(num_return_sequences)] for p in prompts]

    monkeypatch.setattr(loop, "generate", fake_generate)
    return seen


POLICY = SimpleNamespace(model=None, tokenizer=WordTokenizer())


def test_loop_repairs_from_the_flagged_step_and_stops_when_verified(monkeypatch):
    seen = _scripted(monkeypatch, lambda p: "c = a / 2\nprint(c)\n```")
    items = [{"id": "x", "question": "Share 6 apples between 2.", "completion": format_completion(PROGRAM)},
             {"id": "ok", "question": "Twice 6?", "completion": format_completion("print(6 * 2)")}]
    records = loop.repair(POLICY, items, RepairOptions(rounds=3, threshold=None))
    rec, fine = records
    assert fine["attempted"] is False and fine["stop"] == "not_flagged" and fine["rounds"] == []
    assert fine["final"] == items[1]["completion"] and fine["extra_tokens"] == 0
    assert rec["attempted"] and rec["stop"] == "verified" and len(rec["rounds"]) == 1
    entry = rec["rounds"][0]
    assert entry["flag"] == {"step": 3, "reason": "Step 3 raised ZeroDivisionError: division by zero", "kind": "error"}
    assert entry["outcome"] == "accepted" and entry["passes"] and entry["answer"] == "3.0"
    # the kept steps are verbatim; only the flagged item was sent to the policy
    assert rec["final"] == "```python\na = 6\nb = 0\nc = a / 2\nprint(c)\n```" and rec["final_version"] == 1
    assert len(seen) == 1 and len(seen[0]["prompts"]) == 1 and rec["extra_tokens"] == 7  # words of the continuation


def test_a_revision_repeating_an_earlier_version_stops_the_item(monkeypatch):
    # renamed variables and a comment are the same program (program_key)
    _scripted(monkeypatch, lambda p: "# again\nq = a / b\nfor i in range(2):\n    q += i\nprint(q)\n```")
    (rec,) = loop.repair(POLICY, [{"id": "x", "question": "q", "completion": format_completion(PROGRAM)}],
                         RepairOptions(rounds=3, threshold=None))
    assert rec["stop"] == "repeat" and [e["outcome"] for e in rec["rounds"]] == ["repeat"]
    assert rec["final_version"] == 0 and rec["final"] == format_completion(PROGRAM)


def test_a_revision_past_the_growth_margin_is_rejected(monkeypatch):
    long_tail = "c = a / 3\n" + "c = c + 0\n" * 30 + "print(c)\n```"
    _scripted(monkeypatch, lambda p: long_tail)
    (rec,) = loop.repair(POLICY, [{"id": "x", "question": "q", "completion": format_completion(PROGRAM)}],
                         RepairOptions(rounds=3, threshold=None, max_growth=0.5, growth_slack=4))
    # greedy: the same prompt would give the same revision again, so the item stops
    assert rec["stop"] == "over_growth" and [e["outcome"] for e in rec["rounds"]] == ["over_growth"]
    assert rec["final_version"] == 0 and rec["extra_tokens"] > 0


def test_the_loop_stops_after_r_rounds_and_keeps_the_best_version(monkeypatch):
    answers = itertools.cycle(["c = a / b + 1\nprint(c)\n```", "c = b / 0\nprint(c)\n```",
                               "c = 1 / (b * 2)\nprint(c)\n```"])
    scorer = StepScorer()
    _scripted(monkeypatch, lambda p: next(answers))
    items = [{"id": "x", "question": "q", "completion": format_completion(PROGRAM)}]
    (rec,) = loop.repair(POLICY, items, RepairOptions(rounds=3, threshold=0.5), scorer=scorer)
    assert rec["stop"] == "rounds" and len(rec["rounds"]) == 3
    assert all(e["outcome"] == "accepted" and e["status"] == "error" for e in rec["rounds"])
    assert [e["flag"]["step"] for e in rec["rounds"]] == [3, 3, 3]
    assert scorer.calls == 4  # the originals once, then each round's revisions in one batch
    assert rec["final_version"] == 3  # every version fails alike: the latest wins the tie
    (last,) = loop.repair(POLICY, items, RepairOptions(rounds=1, threshold=0.5, final="last"), scorer=scorer)
    assert last["final_version"] == 1


def test_candidates_are_ranked_by_the_verifier(monkeypatch):
    outs = iter(["c = a / b\nprint(c)\n```", "c = a / 3  # BAD\nprint(c)\n```", "c = a / 2\nprint(c)\n```"])
    _scripted(monkeypatch, lambda p: next(outs))
    (rec,) = loop.repair(POLICY, [{"id": "x", "question": "q", "completion": format_completion(PROGRAM)}],
                         RepairOptions(rounds=2, threshold=0.5, candidates=3, temperature=1.0), scorer=StepScorer())
    # the first candidate repeats the original, the second runs with a low step, the third passes
    assert rec["stop"] == "verified" and rec["rounds"][0]["candidates"] == 3
    assert rec["final"].endswith("c = a / 2\nprint(c)\n```")


def test_force_revises_what_the_verifier_passes(monkeypatch):
    _scripted(monkeypatch, lambda p: "a = 6\nprint(a * 3)\n```")
    items = [{"id": "x", "question": "q", "completion": format_completion("a = 6\nprint(a * 2)")}]
    (passed,) = loop.repair(POLICY, items, RepairOptions(threshold=None))
    assert passed["attempted"] is False
    (forced,) = loop.repair(POLICY, items, RepairOptions(threshold=None), force=[True])
    assert forced["attempted"] and forced["flag"]["kind"] == "forced" and forced["stop"] == "verified"
    assert forced["final"] == "```python\na = 6\nprint(a * 3)\n```"  # rewritten whole: without scores no step is kept


def test_demonstration_rebuilds_the_request_of_the_round(monkeypatch):
    _scripted(monkeypatch, lambda p: "c = a / 2\nprint(c)\n```")
    original = format_completion(PROGRAM)
    (rec,) = loop.repair(POLICY, [{"id": "x", "question": "Share.", "completion": original}],
                         RepairOptions(threshold=None))
    ((previous, entry),) = loop.revised_versions(original, rec["rounds"])
    demo = loop.demonstration("Share.", previous, entry)
    assert demo["completion"] == rec["final"] and demo["messages"][0]["role"] == "system"
    assert "Step 3 raised ZeroDivisionError" in demo["messages"][-1]["content"]


def test_vote_keeps_the_answer_most_runs_support(monkeypatch):
    # the original is flagged by the PRM; one candidate passes with another answer, three keep the answer
    outs = itertools.cycle(["c = 9\nprint(c)\n```", "c = a * 2  # BAD\nprint(c)\n```",
                            "d = a + a  # BAD\nprint(d)\n```", "e = 2 * a  # BAD\nprint(e)\n```"])
    _scripted(monkeypatch, lambda p: next(outs))
    items = [{"id": "x", "question": "q", "completion": format_completion("a = 6\nb = a  # BAD\nprint(b * 2)")}]
    options = dict(rounds=1, threshold=0.5, candidates=4, temperature=1.0, prompt="prefill")
    (best,) = loop.repair(POLICY, items, RepairOptions(**options, final="best"), scorer=StepScorer())
    assert best["final"] == "```python\na = 6\nc = 9\nprint(c)\n```" and best["final_version"] == 1
    (voted,) = loop.repair(POLICY, items, RepairOptions(**options, final="vote"), scorer=StepScorer())
    assert voted["rounds"][0]["candidate_answers"] == ["9", "12", "12", "12"]
    assert voted["votes"]["12"] == [4, pytest.approx(0.4)] and voted["votes"]["9"] == [1, pytest.approx(0.9)]
    # answer 12 wins 4 runs to 1; its runs rank alike (flagged, running, 0.1): the latest candidate
    assert voted["final"] == "```python\na = 6\ne = 2 * a  # BAD\nprint(e)\n```" and voted["final_version"] is None


def test_with_golds_the_gold_decides_when_a_solution_is_repaired(monkeypatch):
    # the original prints 12 (gold 18); round 1 gives 15, which the verifier passes; round 2 gives 18
    script = ["c = 6 * 2 + 3\nprint(c)\n```", "c = 6 * 3\nprint(c)\n```", "c = 6 * 4\nprint(c)\n```"]
    outs = iter(script)
    seen = _scripted(monkeypatch, lambda p: next(outs))
    items = [{"id": "x", "question": "Three times 6?", "completion": format_completion("a = 6\nprint(a * 2)")}]
    options = RepairOptions(rounds=3, threshold=0.5)
    # the verifier alone stops at its false pass: 15
    (blind,) = loop.repair(POLICY, items, options, scorer=StepScorer(), force=[True])
    assert blind["stop"] == "verified" and blind["final_check"]["answer"] == "15" and blind["judge"] == "verifier"
    outs = iter(script)
    seen.clear()
    (rec,) = loop.repair(POLICY, items, options, scorer=StepScorer(), force=[True], golds=["18"])
    # the verifier passed the original (12) and round 1 (15): two false passes the gold caught
    assert rec["judge"] == "gold" and rec["stop"] == "gold" and rec["verifier_false_passes"] == 2
    assert [e["answer"] for e in rec["rounds"]] == ["15", "18"] and rec["final_check"]["answer"] == "18"
    assert rec["final_verified"] and rec["final_version"] == 2
    # the policy is never shown the gold: the second request names the verifier's lowest step, not 18
    assert len(seen) == 2 and not any("18" in p for call in seen for p in call["prompts"])
    # a right original is not revised; an item without a gold is left to the verifier
    right = [{"id": "y", "question": "q", "completion": format_completion("print(18)")}]
    (done,) = loop.repair(POLICY, right, options, scorer=StepScorer(), force=[True], golds=["18"])
    assert done["attempted"] is False and done["stop"] == "not_flagged"
    (unread,) = loop.repair(POLICY, right, RepairOptions(threshold=0.5), scorer=StepScorer(), golds=[None])
    assert unread["judge"] == "verifier" and unread["attempted"] is False
    with pytest.raises(ValueError, match="1 items but 2 golds"):
        loop.repair(POLICY, right, options, golds=["1", "2"])


class RecordingScorer(StepScorer):
    """StepScorer that also keeps every (question, steps) it scored."""

    def __init__(self):
        super().__init__()
        self.scored = []

    def score_steps(self, questions, steps):
        self.scored.extend(tuple(st) for st in steps)
        return super().score_steps(questions, steps)


def test_without_a_threshold_the_prm_scores_only_what_it_must_order(monkeypatch):
    """Without a threshold (and no gold, nothing forced, the best version kept) the PRM only orders the
    candidates and versions the sandbox leaves tied at the top; the records are those of scoring all."""
    scripts = {
        "one passes": ["c = a / 0\nprint(c)\n```", "c = a / 2\nprint(c)\n```", "c = b / 0\nprint(c)\n```"],
        "two pass": ["c = a / 3  # BAD\nprint(c)\n```", "c = a / 2\nprint(c)\n```", "c = b / 0\nprint(c)\n```"],
        "none passes": ["c = a / 0  # BAD\nprint(c)\n```", "c = b / 0\nprint(c)\n```", "c = 1 / b\nprint(c)\n```"],
    }
    for name, outs in scripts.items():
        items = [{"id": "x", "question": "q", "completion": format_completion(PROGRAM)}]
        records, scored = [], []
        for threshold in (None, 0.0):  # 0.0 flags nothing a score can flag: the same loop, every version scored
            answers = itertools.cycle(outs)
            _scripted(monkeypatch, lambda p, answers=answers: next(answers))
            scorer = RecordingScorer()
            options = RepairOptions(rounds=2, threshold=threshold, candidates=3, temperature=1.0)
            records.append(loop.repair(POLICY, items, options, scorer=scorer)[0])
            scored.append(scorer.scored)
        lazy, eager = records
        assert {k: lazy[k] for k in ("final", "final_version", "stop")} == \
            {k: eager[k] for k in ("final", "final_version", "stop")}, name
        assert [e["revision"] for e in lazy["rounds"]] == [e["revision"] for e in eager["rounds"]], name
        assert len(scored[0]) <= len(scored[1]), name
        if name == "none passes":  # all tied (none runs): the PRM orders every one, as before
            assert sorted(scored[0]) == sorted(scored[1])
        if name == "one passes":  # nothing is tied: the PRM is never asked
            assert scored[0] == [] and lazy["final"].endswith("c = a / 2\nprint(c)\n```")
        if name == "two pass":  # the two that pass, and only they
            assert len(scored[0]) == 2 and lazy["final"].endswith("c = a / 2\nprint(c)\n```")


def test_equal_completions_are_verified_once():
    scorer = RecordingScorer()
    verifier = Verifier(WordTokenizer(), scorer)
    first, second, other = verifier.verify(["q", "q", "q2"], [format_completion(PROGRAM)] * 3)
    assert first is second and other is not first
    assert len(scorer.scored) == 2 and scorer.calls == 1
