"""End to end: the runner evaluates the tiny model through lighteval, offline; its greedy PoT
agrees with stages.common.generation.evaluate_pot; results are keyed by the weights; the repair
loop and the PRM hook are called through the interfaces eval documents and fail clearly when
their stages are absent."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from eval import gsm8k as runner
from eval.tasks import problems_of

TINY_ARGS = ["--max_new_tokens", "24", "--cot_max_new_tokens", "24", "--batch_size", "5", "--dtype", "float32"]


@pytest.fixture(scope="module")
def base(tiny_base: Path, tmp_path_factory) -> Path:
    """A private copy of the tiny base checkpoint (eval writes into the checkpoint's eval/)."""
    dst = tmp_path_factory.mktemp("evalrun") / "run" / "base" / "v1"
    shutil.copytree(tiny_base, dst, ignore=shutil.ignore_patterns("eval"))
    return dst


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_runner_end_to_end_offline(base: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = runner.main(["--model", str(base), "--eval_sets", "gsm8k:test", "--limit", "4", "--task", "pot", "cot",
                          "--samples", "2", *TINY_ARGS])
    assert folder.parent == base / "eval" and not (base / "eval" / f"{folder.name}.partial").exists()
    res = _results(folder)
    assert res["model"]["manifest_sha256"] and res["model"]["kind"] == "checkpoint"
    pot, cot = res["sets"]["gsm8k:test"]["pot"], res["sets"]["gsm8k:test"]["cot"]
    for m, task in ((pot, "pot_gsm8k_test_l4"), (cot, "cot_gsm8k_test_l4")):
        assert m["n"] == 4 and 0.0 <= m["pass@1"] <= 1.0
        lo, hi = m["pass@1_ci95"]
        assert lo <= m["pass@1"] <= hi
        # lighteval's own aggregation of the same judgments
        assert m["lighteval"][f"{task}|0"]["pass@1"] == pytest.approx(m["pass@1"])
        assert set(m["sampled"]) >= {"pass@1", "pass@2", "maj@2", "samples"}
        assert m["lighteval"][f"{task}_n2|0"]["maj@2"] == pytest.approx(m["sampled"]["maj@2"])
    assert {"no_program_rate", "exec_error_rate"} <= set(pot) and "no_answer_rate" in cot
    import torch
    assert torch.is_grad_enabled()  # lighteval's import-time set_grad_enabled(False) is undone

    gsm = problems_of("gsm8k:test")[:4]
    pot_rows = _rows(folder / "details" / "pot_gsm8k_test.jsonl")
    greedy = [r for r in pot_rows if r["decoding"] == "greedy"]
    sampled = [r for r in pot_rows if r["decoding"] == "sample"]
    assert [r["id"] for r in greedy] == [p["id"] for p in gsm]
    assert [r["answer"] for r in greedy] == [p["answer"] for p in gsm]
    assert len(sampled) == 8 and {r["sample"] for r in sampled} == {0, 1}
    assert all(r["n_tokens"] > 0 and isinstance(r["completion"], str) for r in pot_rows)
    assert [t["task"] for t in res["timings"]] and all(t["wall_s"] > 0 for t in res["timings"])
    cot_rows = _rows(folder / "details" / "cot_gsm8k_test.jsonl")
    assert "extracted_answer" in cot_rows[0] and len(cot_rows) == 12

    # same model, config and data: found, not evaluated again
    again = runner.main(["--model", str(base), "--eval_sets", "gsm8k:test", "--limit", "4", "--task", "pot", "cot",
                         "--samples", "2", *TINY_ARGS])
    assert again == folder


@pytest.mark.slow
def test_greedy_pot_agrees_with_evaluate_pot(base: Path):
    from stages.common.modeling import load_causal_lm, load_tokenizer
    from stages.harness.policy import Policy, evaluate_pot

    n = 12
    folder = runner.main(["--model", str(base), "--eval_sets", "arith:test:500", "--limit", str(n), "--task", "pot",
                          *TINY_ARGS])
    res = _results(folder)["sets"]["arith:test:500"]["pot"]
    rows = _rows(folder / "details" / "pot_arith_test_500.jsonl")

    tok = load_tokenizer(str(base))
    model = load_causal_lm(str(base), None, dtype="float32")
    metrics, details = evaluate_pot(Policy(model, tok), list(problems_of("arith:test:500")[:n]), max_new_tokens=24,
                                    batch_size=5)
    assert [d["completion"] for d in details] == [r["completion"] for r in rows]
    assert [d["status"] for d in details] == [r["status"] for r in rows]
    for key in ("pass@1", "mean_completion_tokens", "no_program_rate", "exec_error_rate"):
        assert res[key] == pytest.approx(metrics[key]), key


def test_field_mapping_options_map_the_jsonl_sets():
    args = runner.parse_args(["--model", "m", "--eval_sets", "arith:test:3", "b.jsonl", "c.jsonl?answer=A",
                              "--question_field", "{Body} {Question}", "--answer_field", "Answer"])
    assert args.eval_sets == ["arith:test:3", "b.jsonl?question={Body} {Question}&answer=Answer", "c.jsonl?answer=A"]
    assert runner.semantic_config(args)["question_field"] == "{Body} {Question}"
    with pytest.raises(SystemExit, match="map the fields of jsonl eval sets; eval_sets has none"):
        runner.parse_args(["--model", "m", "--eval_sets", "gsm8k:test", "--answer_field", "Answer"])


@pytest.mark.slow
def test_a_benchmark_with_other_field_names(base: Path, tmp_path: Path):
    # about 10 s: SVAMP-like rows (body + question, a numeric "Answer", a unit in parentheses) and
    # one gold that cannot be read, which is left out and counted instead of scored 0
    bench = tmp_path / "svamp.jsonl"
    rows = [{"ID": "s1", "Body": "Tom has 2 cats.", "Question": "How many cats?", "Answer": 2.0},
            {"ID": "s2", "Body": "A box holds 4 cups.", "Question": "How many cups in 2 boxes?", "Answer": "8 (cups)"},
            {"ID": "s3", "Body": "Ann is 9.", "Question": "How old is she?", "Answer": "9 or 10"}]
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = runner.main(["--model", str(base), "--eval_sets", str(bench), "--task", "pot", "--question_field",
                          "{Body} {Question}", "--answer_field", "Answer", "--id_field", "ID", *TINY_ARGS])
    name = f"{bench}?question={{Body}} {{Question}}&answer=Answer&id=ID"
    pot = _results(folder)["sets"][name]["pot"]
    assert pot["n"] == 2 and pot["unreadable_gold"] == 1
    details = _rows(folder / "details" / next(p.name for p in (folder / "details").iterdir()))
    assert [(r["id"], r["question"], r["answer"]) for r in details] == [
        ("s1", "Tom has 2 cats. How many cats?", "2.0"), ("s2", "A box holds 4 cups. How many cups in 2 boxes?",
                                                          "8 (cups)")]


def test_repair_and_prm_fail_clearly_before_generating(base: Path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "stages.revise_lib", None)  # import fails like a missing module
        with pytest.raises(SystemExit, match=r"--repair needs the revise stage's library.*"
                                             r"stages\.revise_lib\.repair\.repair\(policy, items, options"):
            runner.main(["--model", str(base), "--eval_sets", "arith:test:3", "--repair"])
    # a policy checkpoint given as the PRM: refused before any model loads, naming the missing file
    with pytest.raises(SystemExit, match=r"--prm .*is not a PRM checkpoint: .*prm_config\.json is missing"):
        runner.main(["--model", str(base), "--eval_sets", "arith:test:3", "--samples", "2", "--prm", str(base)])
    with pytest.raises(SystemExit, match=r"--prm .*is not a PRM checkpoint"):
        runner.main(["--model", str(base), "--eval_sets", "arith:test:3", "--repair", "--prm", str(base)])
    with pytest.raises(SystemExit, match="needs --samples K with K >= 2, or --repair"):
        runner.main(["--model", str(base), "--eval_sets", "arith:test:3", "--prm", str(base)])
    with pytest.raises(SystemExit, match="--task must be among"):
        runner.main(["--model", str(base), "--task", "tot"])
    with pytest.raises(SystemExit, match="unknown key"):
        cfg = base.parent.parent / "bad_eval.yaml"
        cfg.write_text("eval_sets: [arith:test:3]\nsampels: 4\n")
        runner.main(["--config", str(cfg), "--model", str(base)])


@pytest.mark.slow
def test_repair_runs_the_revise_loop_with_the_prm_hook(base: Path, monkeypatch):
    """eval --repair on the tiny model: the revise loop (stages.revise_lib.repair) revises the greedy
    answers the verifier flags, the PRM of --prm (a stand-in with the scorer's interface) scores
    steps for the loop and for best-of-K, and the results report repair beside plain pass@1."""
    import stages.prm_lib.scorer as scorer_module

    seen: dict = {}

    class PRMScorer:
        @classmethod
        def check(cls, checkpoint):
            return Path(checkpoint)

        def __init__(self, checkpoint):
            seen["prm_checkpoint"] = checkpoint

        def score_steps(self, problems, steps):
            seen.setdefault("step_calls", []).append(len(steps))
            return [[0.9] * len(s) for s in steps]

        def score(self, problems, solutions):
            seen.setdefault("prm_calls", []).append(len(solutions))
            return [[0.9, 0.8] if "print" in s else [0.1] for s in solutions]

    monkeypatch.setattr(scorer_module, "PRMScorer", PRMScorer)
    prm_dir = base.parent.parent / "my-prm"
    prm_dir.mkdir(exist_ok=True)
    (prm_dir / "config.json").write_text("{}")  # its identity (the eval key) hashes its files
    folder = runner.main(["--model", str(base), "--eval_sets", "arith:test:500", "--limit", "3", "--task", "pot",
                          "--samples", "2", "--repair", "--repair_rounds", "2", "--repair_max_new_tokens", "16",
                          "--prm", str(prm_dir), *TINY_ARGS])
    res = _results(folder)
    m = res["sets"]["arith:test:500"]["pot"]
    rep = m["repair"]
    # the untrained model writes no program: every greedy answer is flagged and revised
    assert rep["verifier"] == "prm+sandbox" and rep["rounds"] == 2 and rep["attempted"] == 3
    assert rep["pass@1_before"] == m["pass@1"] and 0.0 <= rep["pass@1"] <= 1.0
    assert rep["flag_kinds"] == {"no_program": 3} and rep["extra_tokens_per_problem"] > 0
    assert rep["best_of"]["n"] == 3 and "pass@1" in rep["best_of_same_budget"]
    assert res["config"]["prm_checkpoint"]["path"] == str(prm_dir.resolve())
    assert seen["prm_checkpoint"] == str(prm_dir) and seen["prm_calls"] == [6]
    assert {"prm_best_of_2", "prm_weighted_maj@2"} <= set(m["sampled"])
    rows = _rows(folder / "details" / "pot_arith_test_500.jsonl")
    greedy = [r for r in rows if r["decoding"] == "greedy"]
    assert all(r["repair"]["attempted"] and r["repair"]["rounds"] for r in greedy)
    assert all(r["repair"]["rounds"][0]["flag"]["kind"] == "no_program" for r in greedy)
    assert all("prm_score" in r for r in rows if r["decoding"] == "sample")

    # '@prm' in a run without a prm stage: the sandbox signal alone, said in the results
    folder = runner.main(["--model", str(base), "--eval_sets", "arith:test:500", "--limit", "3", "--task", "pot",
                          "--repair", "--repair_rounds", "1", "--repair_max_new_tokens", "16",
                          "--repair_baseline", "false", "--prm", "@prm", *TINY_ARGS])
    res = _results(folder)
    rep = res["sets"]["arith:test:500"]["pot"]["repair"]
    assert rep["verifier"] == "sandbox" and rep["threshold"] is None and "best_of" not in rep
    assert "prm_checkpoint" not in res["config"]

    # the quantity check and the restart reach the loop from the command line, and the results say so
    folder = runner.main(["--model", str(base), "--eval_sets", "arith:test:500", "--limit", "3", "--task", "pot",
                          "--repair", "--repair_rounds", "2", "--repair_max_new_tokens", "16",
                          "--repair_baseline", "false", "--repair_grounding", "true", "--repair_restart_after", "1",
                          *TINY_ARGS])
    rep = _results(folder)["sets"]["arith:test:500"]["pot"]["repair"]
    assert rep["verifier"] == "sandbox+grounding" and rep["restart_after"] == 1 and rep["sets_in_loop"] == 1


@pytest.mark.slow
def test_two_processes_match_one(base: Path, tmp_path: Path):
    """Under `accelerate launch` with two CPU processes each rank generates a shard; the greedy
    completions are the single-process ones, and every task's samples stay with their problems."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    common = ["--model", str(base), "--eval_sets", "arith:test:500", "--limit", "6", "--task", "pot", "cot",
              "--samples", "2", "--max_new_tokens", "12", "--cot_max_new_tokens", "12", "--batch_size", "4",
              "--dtype", "float32"]
    one = runner.main([*common, "--output_dir", str(tmp_path / "one")])
    proc = subprocess.run([str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                           str(repo / "accelerate_configs" / "cpu.yaml"), "--num_processes", "2",
                           "--main_process_port", "29561", "-m", "eval.gsm8k", *common,
                           "--output_dir", str(tmp_path / "two")],
                          cwd=repo, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (two,) = [p for p in (tmp_path / "two").iterdir() if (p / "results.json").exists()]
    assert _results(two)["world_size"] == 2
    for name in ("pot_arith_test_500", "cot_arith_test_500"):
        a, b = _rows(one / "details" / f"{name}.jsonl"), _rows(two / "details" / f"{name}.jsonl")
        greedy = [[r["completion"] for r in rows if r["decoding"] == "greedy"] for rows in (a, b)]
        assert greedy[0] == greedy[1]
        assert sorted((r["id"], r["sample"]) for r in b if r["decoding"] == "sample") == \
            sorted((r["id"], s) for r in a if r["decoding"] == "greedy" for s in (0, 1))
