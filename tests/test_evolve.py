"""The evolve stage's pieces without a model: the keep filter, deduplication and the per-problem
cap, the tree's prefix choice, greedy and UCT selection, the search's depth and token budget, the
worker's retry of a failing problem, and the checks ``prepare`` runs before anything is generated
(eval overlap, problems without gold, empty problem sets, PRM checkpoints, non-causal-LM policies)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stages.common.checkpoint import CheckpointError
from stages.common.config import ConfigError
from stages.common.data import DataFormatError
from stages.common.pot import format_completion
from stages.evolve_lib.keep import aggregate, kept_keys, rejection, select
from stages.evolve_lib.metrics import histogram, round_metrics
from stages.evolve_lib.sampling import Timings, continuation_prefix, solution_steps
from stages.evolve_lib.stage import (
    EvolveArguments,
    check_no_eval_overlap,
    check_options,
    check_policy,
    load_problem_sources,
    mix_sample,
    resolve_prm,
    round_problems,
)
from stages.evolve_lib.tree import Node, Search, TreeOptions, branch_point, explore, seed_search, select_nodes
from stages.evolve_lib.worker import SamplingOptions, Worker


def _row(program: str, *, correct=True, prm=0.9, n_tokens=10, sample=0, pid="p1") -> dict:
    return {"id": pid, "question": "q", "answer": "1", "completion": format_completion(program), "correct": correct,
            "prm_score": prm, "n_tokens": n_tokens, "sample": sample}


# ---------------------------------------------------------------------------------------------
# keep filter


def test_rejection_reasons_in_order():
    assert rejection({"completion": "no code here", "correct": False, "prm_score": None}, 0.6) == "no_program"
    assert rejection(_row("print(1)", correct=False, prm=0.99), 0.6) == "wrong"
    assert rejection(_row("print(1)", correct=None, prm=0.99), 0.6) == "unjudged"  # never counted as right
    assert rejection(_row("print(1)", prm=0.6), 0.6) == "low_prm"  # above the threshold, not at it
    assert rejection(_row("print(1)", prm=None), 0.6) == "low_prm"
    assert rejection(_row("print(1)", prm=0.61), 0.6) is None


def test_aggregations_of_step_scores():
    assert aggregate([0.9, 0.5, 0.8], "min") == 0.5
    assert aggregate([0.5, 0.5], "product") == 0.25
    assert aggregate([0.2, 0.7], "last") == 0.7
    assert aggregate([], "min") is None


def test_select_dedups_caps_and_prefers_higher_prm_then_shorter():
    rows = [
        _row("a = 1\nprint(a)", prm=0.7, n_tokens=9, sample=0),
        _row("b = 1\nprint(b)", prm=0.95, n_tokens=9, sample=1),   # same program as sample 0, renamed
        _row("x = 2 - 1\nprint(x)", prm=0.8, n_tokens=12, sample=2),
        _row("print(1)", prm=0.8, n_tokens=5, sample=3),            # ties on PRM with sample 2: shorter wins
        _row("print(3 - 2)", prm=0.5, n_tokens=5, sample=4),        # under the threshold
        _row("print(2)", correct=False, prm=0.99, sample=5),
    ]
    kept, discarded = select(rows, threshold=0.6, k=2)
    assert [r["sample"] for r in kept] == [1, 3]
    reasons = {r["sample"]: r["reason"] for r in discarded}
    assert reasons == {0: "duplicate", 2: "over_k", 4: "low_prm", 5: "wrong"}
    assert len(kept) + len(discarded) == len(rows)  # every sample lands somewhere


def test_select_dedups_against_earlier_rounds():
    earlier = kept_keys([_row("y = 1\nprint(y)")])
    kept, discarded = select([_row("z = 1\nprint(z)", sample=0), _row("print(1)", sample=1)], threshold=0.6, k=2,
                             kept_before=earlier["p1"])
    assert [r["sample"] for r in kept] == [1]
    assert discarded[0]["reason"] == "duplicate"


# ---------------------------------------------------------------------------------------------
# tree


def test_branch_point_first_below_or_lowest():
    scores = [0.9, 0.5, 0.3, 0.8]
    assert branch_point(scores, 0.6, "first_below") == 1
    assert branch_point(scores, 0.6, "lowest") == 2
    assert branch_point([0.9, 0.7, 0.8], 0.6, "first_below") == 1  # none under: the lowest
    assert branch_point([0.4, 0.4], 0.3, "lowest") == 0  # ties: the first
    assert branch_point(scores, 0.6, "first_below", start=2) == 2
    assert branch_point(scores, 0.6, "first_below", start=4) is None


def test_seed_search_cuts_each_sample_before_its_branch_point():
    opts = TreeOptions(threshold=0.6, depth=2)
    samples = [
        {"steps": ["a = 1", "b = a + 1", "print(b)"], "prm_scores": [0.9, 0.4, 0.3], "prm_score": 0.3, "n_tokens": 20},
        {"steps": ["a = 1", "b = a * 3", "print(b)"], "prm_scores": [0.8, 0.7, 0.2], "prm_score": 0.2, "n_tokens": 30},
        {"steps": ["c = 5", "print(c)"], "prm_scores": [0.1, 0.9], "prm_score": 0.1, "n_tokens": 10},
        {"steps": [], "prm_scores": [], "prm_score": None, "n_tokens": 4},  # no program: no prefix
    ]
    search = seed_search({"id": "p"}, samples, opts)
    assert set(search.frontier) == {("a = 1",), ("a = 1", "b = a * 3"), ()}
    assert search.frontier[("a = 1", "b = a * 3")].value == 0.7  # the score of the prefix's last step
    assert search.frontier[()].value == pytest.approx((0.3 + 0.2 + 0.1) / 3)  # root: the samples' mean
    assert search.est_tokens == pytest.approx(16.0)


def test_greedy_selection_by_value_and_uct_bonus_for_unvisited():
    search = Search({"id": "p"}, est_tokens=10)
    for steps, value, visits in ((("a",), 0.7, 3), (("b",), 0.6, 0), (("c",), 0.2, 0)):
        search.add(Node(steps, value, 0, visits), max_depth=3)
    search.expansions = 3
    assert [n.steps for n in select_nodes(search, 2, TreeOptions())] == [("a",), ("b",)]
    uct = TreeOptions(selection="uct", uct_c=1.0)
    # a: 0.7 + sqrt(ln 4 / 4) = 1.289; b: 0.6 + sqrt(ln 4) = 1.777; c: 0.2 + 1.177 = 1.377
    assert [n.steps for n in select_nodes(search, 3, uct)] == [("b",), ("c",), ("a",)]
    assert math.isclose(0.7 + math.sqrt(math.log(4) / 4), 1.2887, abs_tol=1e-3)


class _FakeExpander:
    """Continuations from a table: prefix -> the steps written after it and their scores."""

    def __init__(self, table, new_tokens=10):
        self.table, self.new_tokens, self.calls = table, new_tokens, []

    def __call__(self, requests, b):
        self.calls.append([steps for _, steps in requests])
        out = []
        for _, steps in requests:
            more, scores, correct = self.table[steps]
            all_steps = [*steps, *more]
            rows = []
            for _ in range(b):
                rows.append({"completion": format_completion("\n".join(all_steps)), "correct": correct,
                             "steps": all_steps, "prm_scores": [*([0.9] * len(steps)), *scores],
                             "prm_score": min([*([0.9] * len(steps)), *scores]), "n_tokens": 20,
                             "new_tokens": self.new_tokens, "sample": 0})
            out.append(rows)
        return out


def test_explore_goes_deeper_on_the_best_prefix_and_stops_when_solved():
    opts = TreeOptions(branching=2, width=1, depth=3, token_budget=10_000, threshold=0.6)
    table = {
        ("a = 1",): (["b = a + 1", "print(b)"], [0.8, 0.3], False),         # -> new prefix (a, b) at depth 1
        ("a = 1", "b = a + 1"): (["c = b * 2", "print(c)"], [0.9, 0.95], True),  # solved at depth 2
    }
    search = Search({"id": "p"}, est_tokens=10)
    search.add(Node(("a = 1",), 0.9, 0), opts.depth)
    fake = _FakeExpander(table)
    explore([search], fake, opts)
    assert fake.calls == [[("a = 1",)], [("a = 1", "b = a + 1")]]
    assert search.stop_reason == "solved" and len(search.passing) == 1
    assert {r["depth"] for r in search.rows} == {1, 2} and all(r["origin"] == "tree" for r in search.rows)
    assert search.spent == 4 * 10


def test_explore_respects_depth_and_token_budget():
    table = {("s0",): (["s1", "print(0)"], [0.9, 0.1], False),
             ("s0", "s1"): (["s2", "print(0)"], [0.9, 0.1], False),
             ("s0", "s1", "s2"): (["s3", "print(0)"], [0.9, 0.1], False)}
    deep = TreeOptions(branching=1, width=1, depth=2, token_budget=10_000, threshold=0.6)
    search = Search({"id": "p"}, est_tokens=10)
    search.add(Node(("s0",), 0.9, 0), deep.depth)
    fake = _FakeExpander(table)
    explore([search], fake, deep)
    assert fake.calls == [[("s0",)], [("s0", "s1")]]  # a depth-2 prefix is never expanded
    assert max(r["depth"] for r in search.rows) == 2 and search.stop_reason == "exhausted"

    poor = TreeOptions(branching=2, width=1, depth=5, token_budget=50, threshold=0.6)
    search = Search({"id": "p"}, est_tokens=10)
    search.add(Node(("s0",), 0.9, 0), poor.depth)
    fake = _FakeExpander(table, new_tokens=20)
    explore([search], fake, poor)
    assert len(fake.calls) == 1 and search.spent == 40 and search.stop_reason == "budget"


def test_uct_reexpands_a_node_and_greedy_does_not():
    table = {("a",): (["print(0)"], [0.1], False)}  # every continuation fails at its first new step
    for selection, expected in (("greedy", 1), ("uct", 3)):
        opts = TreeOptions(branching=1, width=1, depth=2, token_budget=30, selection=selection, threshold=0.6)
        search = Search({"id": "p"}, est_tokens=10)
        search.add(Node(("a",), 0.9, 0), opts.depth)
        fake = _FakeExpander(table)
        explore([search], fake, opts)
        assert len(fake.calls) == expected, selection


def test_continuation_prompt_and_steps_round_trip():
    steps = solution_steps(format_completion("a = 2\nfor i in range(3):\n    a += i\nprint(a)"))
    assert steps == ["a = 2", "for i in range(3):\n    a += i", "print(a)"]
    head = continuation_prefix(steps[:2])
    assert head == "```python\na = 2\nfor i in range(3):\n    a += i\n"
    assert solution_steps(head + "print(a)\n```") == steps
    assert continuation_prefix([]) == ""


# ---------------------------------------------------------------------------------------------
# the worker: a failing problem is retried alone and recorded, never lost


class _Tokenizer:
    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "PROMPT " + messages[-1]["content"] + " ANSWER "


class _Sampler:
    def __init__(self, bad: str):
        self.bad = bad

    def generate(self, prompts, n, **_):
        if any(self.bad in p for p in prompts):
            raise RuntimeError("generation blew up")
        return [[(format_completion("print(2)"), 3)] * n for _ in prompts]


class _PRM:
    def score_steps(self, questions, steps):
        return [[0.9] * len(s) for s in steps]


def test_worker_records_a_failing_problem_and_keeps_the_others():
    from stages.evolve_lib.sampling import SolutionScorer

    problems = [{"id": f"p{i}", "question": f"question {i}", "answer": "2"} for i in range(3)]
    worker = Worker(_Sampler(bad="question 1"), SolutionScorer(_PRM(), "min"), _Tokenizer(),
                    SamplingOptions(num_samples=2, keep_per_problem=1))
    rows, summaries = worker.run(problems, seed=0, kept_before={})
    by_id = {s["id"]: s for s in summaries}
    assert set(by_id) == {"p0", "p1", "p2"}
    assert by_id["p1"]["failed"].startswith("RuntimeError") and by_id["p0"]["failed"] is None
    assert {r["id"] for r in rows if r["kept"]} == {"p0", "p2"}
    assert sorted(r["reason"] for r in rows if not r["kept"]) == ["duplicate", "duplicate"]
    metrics = round_metrics(rows, summaries, 3)
    assert metrics["problems_failed"] == 1 and metrics["failed_ids"] == ["p1"]
    assert metrics["coverage"] == pytest.approx(2 / 3) and metrics["yield"] == pytest.approx(2 / 4)


def test_histogram_and_timings():
    assert histogram([0.0, 0.05, 0.55, 1.0, 0.999]) == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    t = Timings(generation_s=1.0, generated_tokens=5)
    t.add(Timings(sandbox_s=2.0, generated_tokens=3))
    assert t.to_json()["generated_tokens"] == 8 and t.sandbox_s == 2.0


# ---------------------------------------------------------------------------------------------
# prepare's checks


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_overlap_with_an_eval_set_is_refused_naming_ids_and_sources(tmp_path):
    from stages.common.data import load_problems

    evals = load_problems("arith:test:20", seed=0)
    train = _jsonl(tmp_path / "train.jsonl", [{"id": "own-1", "question": "What is 1+1?", "answer": "2"},
                                             {k: evals[3][k] for k in ("id", "question", "answer")}])
    problems, _ = load_problem_sources([str(train)], seed=0)
    with pytest.raises(ConfigError) as e:
        check_no_eval_overlap(problems, [str(train)], ["arith:test:20"], seed=0)
    assert evals[3]["id"] in str(e.value) and "arith:test:20" in str(e.value) and "train.jsonl" in str(e.value)
    check_no_eval_overlap(load_problem_sources(["arith:train:50"], seed=0)[0], ["arith:train:50"],
                          ["arith:test:500"], seed=0)  # the task's splits never share a problem


def test_problems_without_gold_or_none_at_all_are_errors(tmp_path):
    blank = _jsonl(tmp_path / "blank.jsonl", [{"id": "a", "question": "q", "answer": "1"},
                                             {"id": "b", "question": "q2", "answer": " "}])
    with pytest.raises(DataFormatError, match=r"blank.jsonl:2: field 'answer'"):
        load_problem_sources([str(blank)], seed=0)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataFormatError, match="holds no problem"):
        load_problem_sources([str(empty)], seed=0)
    unreadable = _jsonl(tmp_path / "words.jsonl", [{"id": "a", "question": "q", "answer": "@@@ ???"}])
    with pytest.raises(DataFormatError, match=r"words.jsonl: field 'answer'.*can be read"):
        load_problem_sources([str(unreadable)], seed=0)


def test_unreadable_golds_and_repeated_ids_are_left_out_and_counted(tmp_path):
    mixed = _jsonl(tmp_path / "mixed.jsonl", [{"id": "a", "question": "q", "answer": "@@@ ???"},
                                             {"id": "b", "question": "q2", "answer": "4"}])
    problems, counts = load_problem_sources([str(mixed), "arith:train:30:1", "arith:train:30:1:levels=1,2,3"], seed=0)
    assert len(problems) == 31 and problems[0]["id"] == "b"
    assert counts == {"unreadable_golds": 1, "duplicate_ids": 30}


class _Scorer:
    @classmethod
    def check(cls, path):
        from stages.prm_lib.scorer import PRMScorer

        return PRMScorer.check(path)


def test_prm_checkpoint_missing_or_of_the_wrong_kind(tmp_path):
    with pytest.raises(CheckpointError, match="prm_checkpoint '@prm'"):
        resolve_prm("@prm", tmp_path / "run", _Scorer)
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(CheckpointError, match="prm_config.json"):
        resolve_prm(str(policy), tmp_path, _Scorer)


def test_a_policy_that_is_not_a_causal_lm_is_refused(tmp_path):
    classifier = tmp_path / "classifier"
    classifier.mkdir()
    (classifier / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForTokenClassification"]}))
    with pytest.raises(CheckpointError, match=r"config.json field 'architectures'"):
        check_policy(str(classifier))
    prm = tmp_path / "prm"
    prm.mkdir()
    (prm / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    (prm / "prm_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="PRM checkpoint, not a policy"):
        check_policy(str(prm))
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    check_policy(str(lm))


@pytest.mark.parametrize("field,value,match", [
    ("keep_threshold", 1.5, "keep_threshold"),
    ("prm_aggregation", "median", "prm_aggregation"),
    ("num_samples", 0, "num_samples"),
    ("temperature", 0.0, "temperature"),
    ("tree_selection", "beam", "tree_selection"),
    ("tree_depth", 0, "tree_depth"),
    ("mix_ratio", 0.5, "mix_data"),
])
def test_bad_options_name_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        check_options(EvolveArguments(**{field: value}))


def test_round_slices_and_mix_share():
    problems = [{"id": str(i)} for i in range(10)]
    assert [p["id"] for p in round_problems(problems, 4, 3)] == ["8", "9", "0", "1"]
    assert round_problems(problems, None, 2) == problems
    mix = [{"id": f"m{i}"} for i in range(100)]
    assert len(mix_sample(mix, 30, 0.25, seed=0)) == 10  # 10 of 40 rows: a quarter
    assert mix_sample(mix, 0, 0.5, seed=0) == []


def test_report_shows_the_evolve_panel(tmp_path):
    from eval.report import build
    from stages.common.checkpoint import checkpoint_key, open_stage

    rows = [_row("print(1)", prm=0.9, sample=0, pid="a") | {"kept": True, "origin": "sample", "new_tokens": 10},
            _row("print(2)", correct=False, prm=0.2, sample=1, pid="a") | {"kept": False, "reason": "wrong",
                                                                            "origin": "sample", "new_tokens": 10}]
    summaries = [{"id": "a", "_summary": True, "tree": True, "tree_tokens": 40, "tree_passing": True,
                  "control_tokens": 42, "control_passing": False, "tree_stop": "solved"}]
    metrics = round_metrics(rows, summaries, 1)
    assert metrics["tree_vs_best_of_n"] == {"problems": 1, "tree_solved": 1, "tree_tokens": 40, "best_of_n_solved": 0,
                                            "best_of_n_tokens": 42, "stop_reasons": {"solved": 1}}
    ckpt = open_stage(tmp_path, "evolve", checkpoint_key(config={"s": 1}, parent=None, inputs=[], seed=0))
    ckpt.finalize(metrics={"rounds": [metrics], "scoring_share_of_build": 0.125})
    html_path, md_path = build(tmp_path)
    assert "Evolve: self-evolution" in html_path.read_text() and (tmp_path / "report_files" / "evolve.png").is_file()
    assert "1 / 40" in md_path.read_text() and "0 / 42" in md_path.read_text()
    # both scoring shares, each named: of the sampling (the round's) and of the whole stage (its build)
    header = next(line for line in md_path.read_text().splitlines() if "sandbox+PRM share of sampling" in line)
    assert "sandbox+PRM share of the stage" in header
    assert "| 0.125 |" in md_path.read_text()
