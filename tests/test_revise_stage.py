"""The revise stage: its inputs (solution files, evolve's discarded samples, sampled problems), bad
input refused before anything is written, the dry run, and end to end on the tiny model (slow): a
scripted reviser exercises repairs, outputs, fine-tuning and resuming after a crash; the real
launch module runs the recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common.config import ConfigError
from stages.common.data import DataFormatError
from stages.common.pot import format_completion
from stages.revise_lib.data import read_solutions
from stages.revise_lib.stage import ReviseArguments, judge, loop_metrics, select_items

REPO = Path(__file__).resolve().parents[1]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _solution(i: int, completion: str, answer: str = "6", **extra) -> dict:
    return {"id": f"p{i}", "question": f"What is 2 times 3, case {i}?", "answer": answer, "completion": completion,
            **extra}


def test_read_solutions_keeps_evolves_revisable_discards_and_names_bad_rows(tmp_path):
    ckpt = tmp_path / "evolve" / "v1"
    ckpt.mkdir(parents=True)
    rows = [_solution(1, "x", reason="wrong"), _solution(2, "x", reason="duplicate"),
            _solution(3, "x", reason="low_prm"), _solution(4, "x", reason="over_k"), _solution(5, "x",
                                                                                          reason="no_program")]
    path = _jsonl(ckpt / "discarded.jsonl", rows)
    got, skipped = read_solutions(str(path))
    assert [r["id"] for r in got] == ["p1", "p3", "p5"] and skipped == {"duplicate": 1, "over_k": 1}
    plain = _jsonl(tmp_path / "mine.jsonl", [{"question": "q", "answer": "1", "completion": "c"}])
    ((row,), _) = read_solutions(str(plain))
    assert row["id"] == "mine-1" and row["line"] == 1
    bad = _jsonl(tmp_path / "bad.jsonl", [_solution(1, "c"), {"question": "q", "answer": "1"}])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: field 'completion' is missing"):
        read_solutions(str(bad))
    with pytest.raises(DataFormatError, match="does not exist"):
        read_solutions(str(tmp_path / "nope.jsonl"))


def test_select_items_judges_originals_by_the_gold_and_dedupes():
    right = format_completion("print(2 * 3)")
    wrong = format_completion("a = 2\nprint(a + 3)")
    same_wrong = format_completion("b = 2\nprint(b + 3)  # the same program")
    solutions = [{**_solution(1, right), "source": "f", "line": 1}, {**_solution(1, wrong), "source": "f", "line": 2},
                 {**_solution(1, same_wrong), "source": "f", "line": 3},
                 {**_solution(2, wrong, answer="???"), "source": "f", "line": 4},
                 {**_solution(3, wrong), "source": "f", "line": 5}]
    args = ReviseArguments()
    items, counts = select_items(args, [], solutions)
    assert [it["key"] for it in items] == ["p1#f#2", "p3#f#5"]
    assert counts == {"total": 5, "sampled": 0, "from_files": 5, "wrong": 3, "right": 1, "unreadable_gold": 1,
                      "duplicates": 1, "selected": 2}
    args.select, args.max_items = "wrong_or_flagged", 2
    items, counts = select_items(args, [], solutions)
    assert [it["original_correct"] for it in items] == [True, False] and counts["over_max_items"] == 1


def test_judge_marks_the_round_that_repaired_and_what_broke():
    items = [{"key": "a", "id": "a", "answer": "6", "original": "x", "original_correct": False},
             {"key": "b", "id": "b", "answer": "6", "original": "y", "original_correct": True}]
    fix, bad = format_completion("print(6)"), format_completion("print(7)")
    records = [{"id": "a", "attempted": True, "final": fix, "stop": "verified", "extra_tokens": 4, "flag": None,
                "rounds": [{"round": 1, "outcome": "accepted", "revision": bad, "status": "ok"},
                           {"round": 2, "outcome": "repeat", "revision": bad, "status": "ok"},
                           {"round": 3, "outcome": "accepted", "revision": fix, "status": "ok"}]},
               {"id": "b", "attempted": True, "final": bad, "stop": "rounds", "extra_tokens": 2, "flag": None,
                "rounds": [{"round": 1, "outcome": "accepted", "revision": bad, "status": "ok"}]}]
    a, b = judge(items, records)
    assert [e.get("correct") for e in a["rounds"]] == [False, None, True]
    assert a["repaired"] and a["repaired_round"] == 3 and a["final_answer"] == "6" and not a["broken"]
    assert b["broken"] and not b["repaired"] and b["repaired_round"] is None
    m = loop_metrics([a, b], rounds=3)
    assert (m["wrong"], m["repaired"], m["broken"], m["repair_rate"]) == (1, 1, 1, 1.0)
    assert m["repaired_by_round"] == {"1": 0, "2": 0, "3": 1} and m["outcomes"] == {"accepted": 3, "repeat": 1}


def _main(argv):
    from stages.revise import main

    return main(argv)


BASE = ["--model_name_or_path", "tiny", "--train_data", "arith:train:8", "--eval_data", "arith:test:4",
        "--prm_checkpoint", "none", "--use_cpu", "true"]


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    runs = ["--config", "recipes/tiny/revise.yaml", "--runs_dir", str(tmp_path), "--run", "r", *BASE,
            "--solutions", "none"]
    with pytest.raises(ConfigError, match="prompt must be one of"):
        _main([*runs, "--revise_prompt", "chat"])
    with pytest.raises(ConfigError, match="train_on must be"):
        _main([*runs, "--train_on", "everything"])
    with pytest.raises(ConfigError, match="are in the eval sets"):
        _main([*runs, "--train_data", "arith:test:8", "--eval_data", "arith:test:8"])
    with pytest.raises(ConfigError, match="prm_checkpoint '@prm'"):
        _main([*runs, "--prm_checkpoint", "@prm", "--prm_required", "true"])
    with pytest.raises(DataFormatError, match="evolve.*does not exist"):
        _main([*runs, "--solutions", "@evolve", "--solutions_required", "true"])
    assert not (tmp_path / "r" / "revise").exists()


def test_dry_run_prints_the_plan(tmp_path, capsys):
    sol = _jsonl(tmp_path / "s.jsonl", [_solution(1, "c"), _solution(2, "c")])
    assert _main(["--config", "recipes/tiny/revise.yaml", "--runs_dir", str(tmp_path), "--run", "r", *BASE,
                  "--solutions", str(sol), "@evolve", "--dry_run", "true"]) is None
    out = capsys.readouterr().out
    plan = json.loads(out[out.index("{"):])
    assert plan["problems"] == 8 and plan["solutions"] == 2 and plan["solutions_missing"] == ["@evolve"]
    assert plan["verifier"] == "sandbox" and plan["loop"]["rounds"] == 3
    assert not (tmp_path / "r" / "revise").exists()


# ---------------------------------------------------------------------------------------------
# end to end (slow)


def _oracle(monkeypatch, problems, calls):
    """Revisions that write the reference program from the flagged step on."""
    from stages.revise_lib import repair as loop

    programs = {p["question"]: p["program"] for p in problems}

    def fake_generate(model, tokenizer, prompts, *, num_return_sequences=1, **kw):
        calls.append(len(prompts))
        out = []
        for prompt in prompts:
            question = next(q for q in programs if q in prompt)
            kept = prompt[prompt.rindex("```python\n") + len("```python\n"):]
            lines = programs[question].splitlines()
            tail = "\n".join(lines[len(kept.splitlines()):]) if kept else programs[question]
            out.append([tail + "\n```"] * num_return_sequences)
        return out

    monkeypatch.setattr(loop, "generate", fake_generate)


@pytest.mark.slow
def test_stage_repairs_writes_outputs_trains_and_resumes(tmp_path, monkeypatch):
    """The untrained tiny model answers without programs; a scripted reviser writes the reference
    programs: every item is repaired, the outputs and the fine-tuning rows follow, and a crash in
    the second chunk resumes with only the unfinished chunk. ~25 s."""
    from stages.common.data import load_problems
    from stages.revise_lib import stage as stage_lib

    problems = load_problems("arith:train:6", seed=0)
    calls: list[int] = []
    _oracle(monkeypatch, problems, calls)
    argv = ["--config", "recipes/tiny/revise.yaml", "--runs_dir", str(tmp_path), "--run", "r", *BASE,
            "--train_data", "arith:train:6", "--solutions", "none", "--chunk_size", "4", "--sample_max_new_tokens",
            "8", "--revise_temperature", "0", "--candidates", "1", "--eval_max_new_tokens", "8",
            "--per_device_train_batch_size", "4", "--num_train_epochs", "1", "--max_length", "512"]
    real = stage_lib.judge
    crash = {"n": 0}

    def judge_then_crash(items, records):
        crash["n"] += 1
        if crash["n"] == 2:
            raise RuntimeError("killed in the second chunk")
        return real(items, records)

    monkeypatch.setattr(stage_lib, "judge", judge_then_crash)
    with pytest.raises(RuntimeError, match="second chunk"):
        _main(argv)
    assert calls == [4, 2]  # one generation round per chunk: the oracle's revisions verify at once
    monkeypatch.setattr(stage_lib, "judge", real)
    out = _main(argv)
    assert calls == [4, 2, 2]  # the rerun revised only the unfinished chunk
    metrics = json.loads((out / "metrics.json").read_text())
    loop = metrics["loop"]
    assert metrics["inputs"]["wrong"] == 6 and loop["wrong"] == 6 and loop["repaired"] == 6
    assert loop["repair_rate"] == 1.0 and loop["stops"] == {"gold": 6} and metrics["verifier"] == "sandbox"
    assert loop["judge"] == {"gold": 6} and loop["verifier_false_passes"] == 0
    revised = [json.loads(x) for x in (out / "revised.jsonl").read_text().splitlines()]
    verified = [json.loads(x) for x in (out / "verified.jsonl").read_text().splitlines()]
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    train = [json.loads(x) for x in (out / "train_rows.jsonl").read_text().splitlines()]
    assert len(revised) == len(verified) == len(pairs) == 6
    assert all(r["repaired"] and r["rounds"][0]["correct"] for r in revised)
    assert all(v["source"] == "revise" and v["correct"] and v["n_tokens"] > 0 for v in verified)
    assert all(p["kind"] == "revised" and p["chosen"] != p["rejected"] for p in pairs)
    assert metrics["train_rows_by_kind"] == {"repaired": 6, "demonstration": 6}  # no right sample to replay
    demo = next(t for t in train if t["kind"] == "demonstration")
    assert "no ```python block" in demo["messages"][-1]["content"] and demo["completion"].startswith("```python")
    assert metrics["train_rows"] == 12 and "eval_before" in metrics and "eval" in metrics
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["stage"] == "revise"
    assert _main(argv) == out  # same parent, config and data: skipped


@pytest.mark.slow
def test_launch_module_runs_the_recipe(tmp_path):
    """python -m stages.revise with the tiny recipe on the untrained model: nothing is repaired
    (it writes no program), which is reported, and the policy is saved as it is. ~30 s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "stages.revise", "--config", "recipes/tiny/revise.yaml", "--runs_dir",
           str(tmp_path), "--run", "r", *BASE, "--solutions", "@evolve", "--rounds", "1", "--sample_max_new_tokens",
           "8", "--revise_max_new_tokens", "8", "--eval_max_new_tokens", "8", "--eval_before", "false"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no solution was repaired" in proc.stderr
    out = tmp_path / "r" / "revise" / "v1"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["loop"]["wrong"] == 8 and metrics["loop"]["repaired"] == 0
    assert metrics["train"] == "skipped: no repaired solution" and metrics["inputs"]["solutions_missing"] == ["@evolve"]
    assert (out / "model.safetensors").is_file() and (out / "revised.jsonl").is_file()
    bad = subprocess.run([*cmd[:-2], "--revise_prompt", "chat"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode == 2 and "prompt must be one of" in bad.stderr and "Traceback" not in bad.stderr
