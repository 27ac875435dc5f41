"""DPO preference pairs (stages.dpo_lib.pairs, .sources, .stage): every kind, the checks in the
sandbox, what is dropped and counted, the mix, the sources, and the no-pairs error that comes
before the model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.common.config import ConfigError
from stages.common.data import DataFormatError
from stages.common.pot import format_completion
from stages.dpo_lib.pairs import (
    Drops,
    PairOptions,
    StripCandidate,
    build_pairs,
    limit_per_problem,
    mix,
    verify_strip,
)
from stages.dpo_lib.sources import read_sources
from stages.dpo_lib.stage import parse_mix, to_preference

VERBOSE = "a = 4\nb = 5\n# total is a times b\ntotal = a * b\nprint('total:', total)\nanswer = total\nprint(answer)\n"
PLAIN = "a = 4\nb = 5\ntotal = a * b\nprint(total)\n"


def words(texts):
    """A stand-in token counter: whitespace-separated pieces."""
    return [len(t.split()) for t in texts]


def solution(pid, program, *, correct=True, answer="20", executed="20", **extra):
    return {"id": pid, "question": f"question {pid}?", "answer": answer, "completion": format_completion(program),
            "executed_answer": executed if correct else "1", "correct": correct, "source": "test",
            "n_tokens": len(format_completion(program).split()), "pair_source": "test.jsonl", **extra}


def build(solutions, pair_rows=(), **options):
    drops = Drops()
    pairs = build_pairs(solutions, list(pair_rows), words, PairOptions(**options), drops,
                        source_of=lambda s: s["pair_source"])
    return pairs, drops.to_json()


def test_strip_pairs_chosen_is_the_stripped_program_checked_in_the_sandbox():
    pairs, dropped = build([solution("p1", VERBOSE), solution("p2", PLAIN)])
    (pair,) = [p for p in pairs if p["kind"] == "strip"]
    assert pair["chosen"] == format_completion(PLAIN) and pair["rejected"] == format_completion(VERBOSE)
    assert pair["chosen_tokens"] < pair["rejected_tokens"] and pair["source"] == "test.jsonl"
    assert dropped["strip"] == {"unchanged": 1}  # the plain program has nothing to strip


def test_a_stripped_program_that_prints_another_answer_is_dropped():
    # print(..., end="") joins the next print's line: without it the last line is another answer
    joined = "a = 2\nprint(a, end='')\nprint(0)\n"
    pairs, dropped = build([solution("p1", joined, answer="20", executed="20")])
    assert pairs == [] and dropped["strip"] == {"different_answer": 1}


def test_a_stripped_program_that_does_not_parse_or_equals_the_original_is_dropped():
    original = solution("p1", VERBOSE)
    broken = StripCandidate(original, format_completion("total = (4 *\nprint(total)"), 30, 10, "x")
    same = StripCandidate(original, original["completion"], 30, 30, "x")
    good = StripCandidate(original, format_completion(PLAIN), 30, 10, "x")
    drops = Drops()
    pairs = verify_strip([broken, same, good], drops)
    assert len(pairs) == 1 and pairs[0]["chosen"] == format_completion(PLAIN)
    assert drops.to_json() == {"strip": {"equal": 1, "unparseable": 1}}


def test_strip_margin():
    light = "a = 4  # four\nb = a * 5\nprint(b)\n"  # stripping saves one word of eight
    pairs, dropped = build([solution("p1", light)], strip_min_saving=0.2)
    assert pairs == [] and dropped["strip"] == {"below_margin": 1}
    pairs, _ = build([solution("p1", light)], strip_min_saving=0.1)
    assert [p["kind"] for p in pairs] == ["strip"]


def test_sampled_pairs_shortest_against_longest_correct_sample():
    samples = [solution("p1", PLAIN), solution("p1", VERBOSE), solution("p1", PLAIN), solution("p1", PLAIN + "# c\n"),
               solution("p1", "print(9)\n", correct=False)]
    pairs, dropped = build(samples, mix={"sampled": 1.0, "strip": 0.0})
    (pair,) = pairs
    assert pair["kind"] == "sampled" and pair["chosen"] == format_completion(PLAIN)
    assert pair["rejected"] == format_completion(VERBOSE)
    # below the ratio: no pair, counted
    pairs, dropped = build(samples, mix={"sampled": 1.0, "strip": 0.0}, sampled_min_ratio=5.0)
    assert pairs == [] and dropped["sampled"] == {"below_ratio": 1}


def test_a_problem_with_no_correct_sample_gives_no_pair_and_is_counted():
    wrong = [solution("p1", "print(1)\n", correct=False), solution("p1", "print(2)\n", correct=False)]
    pairs, dropped = build(wrong, mix={"strip": 1.0, "sampled": 1.0, "correct_vs_wrong": 1.0})
    assert pairs == []
    assert dropped == {kind: {"no_correct_solution": 1} for kind in ("correct_vs_wrong", "sampled", "strip")}


def test_an_unreadable_gold_is_dropped_not_used():
    row = {**solution("p1", VERBOSE), "correct": None}
    pairs, dropped = build([row])
    assert pairs == [] and dropped["strip"] == {"unreadable_gold": 1}


def test_correct_vs_wrong_pairs():
    samples = [solution("p1", VERBOSE), solution("p1", PLAIN), solution("p1", "print(21)\n", correct=False),
               solution("p2", PLAIN)]
    pairs, dropped = build(samples, mix={"correct_vs_wrong": 1.0, "strip": 0.0, "sampled": 0.0})
    (pair,) = pairs
    assert pair["kind"] == "correct_vs_wrong" and pair["chosen"] == format_completion(PLAIN)
    assert pair["rejected"] == format_completion("print(21)\n")
    assert dropped["correct_vs_wrong"] == {"no_wrong_solution": 1}


def test_pair_rows_from_a_file_equal_ones_dropped():
    rows = [{"id": "r1", "question": "q1?", "answer": "3", "chosen": "```python\nprint(3)\n```",
             "rejected": "```python\nprint(4)\n```", "kind": "revised", "source": "pairs.jsonl"},
            {"question": "q2?", "chosen": "same", "rejected": "same ", "kind": "revised", "source": "pairs.jsonl"}]
    pairs, dropped = build([], rows)
    (pair,) = pairs
    assert pair["kind"] == "revised" and pair["chosen_tokens"] == 3 and pair["source"] == "pairs.jsonl"
    assert dropped == {"revised": {"equal": 1}}


def test_per_problem_limit_and_duplicates():
    pair = {"question": "q", "chosen": "a", "rejected": "b", "kind": "strip"}
    others = [{**pair, "chosen": f"a{i}"} for i in range(4)]
    drops = Drops()
    kept = limit_per_problem([pair, dict(pair), *others], 2, drops, seed=0)
    assert len(kept) == 2 and drops.to_json() == {"strip": {"duplicate": 1, "over_per_problem_limit": 3}}


def test_mix_weights_and_cap():
    pairs = [{"question": f"q{i}", "chosen": "a", "rejected": "b", "kind": kind}
             for kind in ("strip", "revised") for i in range(10)]
    drops = Drops()
    out = mix(pairs, PairOptions(mix={"strip": 0.5, "revised": 2.0}, seed=1), drops)
    assert sum(p["kind"] == "strip" for p in out) == 5 and sum(p["kind"] == "revised" for p in out) == 20
    assert drops.to_json() == {"strip": {"mix_weight": 5}}
    capped = mix(pairs, PairOptions(mix={"strip": 1.0, "revised": 1.0}, max_pairs=8, seed=1), Drops())
    assert len(capped) == 8
    again = mix(pairs, PairOptions(mix={"strip": 0.5, "revised": 2.0}, seed=1), Drops())
    assert again == out  # seeded


def test_strip_pairs_stop_at_the_cap():
    many = [solution(f"p{i}", VERBOSE.replace("4", str(i + 2))) for i in range(200)]
    for s, i in zip(many, range(200), strict=True):
        s["answer"] = s["executed_answer"] = str((i + 2) * 5)
    pairs, _ = build(many, max_pairs=20)
    assert len(pairs) == 20


def test_parse_mix():
    assert parse_mix(None)["strip"] == 1.0
    assert parse_mix('{"correct_vs_wrong": 0.5}')["correct_vs_wrong"] == 0.5
    with pytest.raises(ConfigError, match="unknown pair kind"):
        parse_mix({"shiny": 1})
    with pytest.raises(ConfigError, match=">= 0"):
        parse_mix({"strip": -1})
    with pytest.raises(ConfigError, match="every weight is 0"):
        parse_mix({"strip": 0, "sampled": 0, "revised": 0})


def test_to_preference_is_conversational():
    example = to_preference({"question": "q?", "chosen": "c", "rejected": "r"})
    assert example["prompt"][-1] == {"role": "user", "content": "q?"}
    assert example["chosen"] == [{"role": "assistant", "content": "c"}]


# ---------------------------------------------------------------------------------------------
# sources


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sources_files_and_checkpoints(tmp_path):
    solutions = _write(tmp_path / "verified.jsonl", [
        {k: v for k, v in solution("p1", VERBOSE).items() if k != "pair_source"}])
    pairs = _write(tmp_path / "pairs.jsonl", [{"question": "q", "chosen": "a", "rejected": "b"}])
    data = read_sources([str(solutions), str(pairs)], tmp_path / "run")
    assert len(data.solutions) == 1 and data.solutions[0]["pair_source"] == str(solutions)
    assert data.pairs[0]["kind"] == "file" and data.files == [str(solutions), str(pairs)]


def test_sources_bad_rows_and_missing_stages(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", [{"question": "q", "chosen": 3, "rejected": "b"}])
    with pytest.raises(DataFormatError, match="bad.jsonl:1: field 'chosen' expected str"):
        read_sources([str(bad)], tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(DataFormatError, match="does not exist"):
        read_sources([str(run / "revise")], run)
    assert read_sources([str(run / "revise")], run, required=False).skipped == [str(run / "revise")]
    with pytest.raises(DataFormatError, match="does not exist"):
        read_sources([str(tmp_path / "elsewhere" / "revise")], run, required=False)  # not a stage of this run


def test_no_pairs_is_an_error_naming_the_sources_before_the_model_loads(tmp_path, tiny_base, monkeypatch):
    from stages import dpo
    from stages.harness import lifecycle

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(lifecycle, "load_policy", no_loading)
    plain = _write(tmp_path / "plain.jsonl", [
        {k: v for k, v in solution("p1", PLAIN).items() if k != "pair_source"}])
    argv = ["--config", "recipes/tiny/dpo.yaml", "--runs_dir", str(tmp_path / "runs"), "--run", "r",
            "--model_name_or_path", str(tiny_base), "--train_data", str(plain), "--eval_data", "none",
            "--sample_problems", "none"]  # the recipe samples the policy: a pair source, so no early error
    with pytest.raises(DataFormatError, match=r"plain\.jsonl: gives no preference pair .*unchanged"):
        dpo.main(argv)
    assert not (tmp_path / "runs" / "r" / "dpo").exists()
    with pytest.raises(ConfigError, match="untrained embedded model"):
        dpo.main([*argv[:6], "--model_name_or_path", "tiny", *argv[8:]])


def test_latest_policy_of_a_stage_is_a_stage_before_it(tmp_path):
    from stages.common.checkpoint import CheckpointError, checkpoint_key, open_stage, resolve_policy

    run = tmp_path / "r"
    for stage in ("sft", "grpo", "dpo"):
        ckpt = open_stage(run, stage, checkpoint_key(config={"s": stage}, parent=None, inputs=[], seed=0))
        (ckpt.partial_dir / "config.json").write_text("{}")
        ckpt.finalize(metrics={})
    assert resolve_policy("@latest_policy", run) == str(run / "dpo")  # length_rl, or no stage named
    assert resolve_policy("@latest_policy", run, "length_rl") == str(run / "dpo")
    assert resolve_policy("@latest_policy", run, "dpo") == str(run / "grpo")  # a rerun of dpo: not itself
    assert resolve_policy("@latest_policy", run, "revise") == str(run / "grpo")
    with pytest.raises(CheckpointError, match="no complete policy checkpoint"):
        resolve_policy("@latest_policy", run, "sft")


def test_sources_read_a_checkpoint_s_pairs_and_solutions(tmp_path):
    from stages.common.checkpoint import checkpoint_key, open_stage

    run = tmp_path / "run"
    ckpt = open_stage(run, "evolve", checkpoint_key(config={}, parent=None, inputs=[], seed=0))
    row = {k: v for k, v in solution("p1", VERBOSE).items() if k != "pair_source"}
    _write(ckpt.partial_dir / "verified.jsonl", [row])
    _write(ckpt.partial_dir / "discarded.jsonl", [{**row, "correct": False, "reason": "wrong"}])
    _write(ckpt.partial_dir / "pairs.jsonl", [{"question": "q", "chosen": "a", "rejected": "b"}])
    ckpt.finalize(metrics={})
    data = read_sources([str(run / "evolve")], run)
    assert [s["correct"] for s in data.solutions] == [True, False]
    assert data.pairs[0]["kind"] == "revised"  # a checkpoint's pairs.jsonl: revise's kind unless a row names one
    assert [Path(f).name for f in data.files] == ["pairs.jsonl", "verified.jsonl", "discarded.jsonl"]
    empty = open_stage(run, "grpo", checkpoint_key(config={}, parent=None, inputs=[], seed=0))
    empty.finalize(metrics={})
    with pytest.raises(DataFormatError, match="without pairs.jsonl, verified.jsonl or discarded.jsonl"):
        read_sources([str(run / "grpo")], run)
