"""The dpo stage end to end on the tiny model (slow): pairs from a verbose solutions file and from
the policy's own samples, the checkpoint's pairs and metrics, TRL's logged reward margins in the
run report, a skip on rerun; and LoRA with precomputed reference log-probs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common.data import load_problems, write_jsonl
from stages.common.pot import format_completion

REPO = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}


def _verbose(path: Path, n: int) -> Path:
    """Verified rows in a teacher's verbose style: comments, intermediate prints, an answer variable."""
    rows = []
    for p in load_problems(f"arith:train:{n}:5", seed=0):
        lines = p["program"].splitlines()
        body, final = lines[:-1], lines[-1]
        shown = [f"# step {i}\n{line}" + (f"\nprint('{line.split()[0]}:', {line.split()[0]})" if "=" in line
                                          and not line.startswith("assert") else "")
                 for i, line in enumerate(body)]
        program = "\n".join(shown) + f"\nanswer = {final[len('print('):-1]}\nprint(answer)\n"
        completion = format_completion(program)
        rows.append({"id": p["id"], "question": p["question"], "answer": p["answer"], "completion": completion,
                     "executed_answer": p["answer"], "correct": True, "source": "test",
                     "n_tokens": len(completion.split())})
    write_jsonl(path, rows)
    return path


def _dpo(runs: Path, parent: Path, data: Path, *extra: str, check: bool = True):
    cmd = [sys.executable, "-m", "stages.dpo", "--config", "recipes/tiny/dpo.yaml", "--runs_dir", str(runs),
           "--run", "r", "--model_name_or_path", str(parent), "--train_data", str(data),
           "--eval_data", "arith:test:16", "--eval_batch_size", "16", "--eval_max_new_tokens", "48",
           "--max_train_samples", "32", "--per_device_train_batch_size", "8", "--logging_steps", "1",
           "--save_steps", "2", "--num_train_epochs", "1", "--sample_problems", "none",
           *extra]  # extra may sample (the last flag counts)
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, check=check, timeout=600)


@pytest.mark.slow
def test_dpo_stage_end_to_end(tmp_path, tiny_base):
    data = _verbose(tmp_path / "verbose.jsonl", 40)
    out = _dpo(tmp_path, tiny_base, data, "--sample_problems", "arith:train:6:9", "--samples_per_problem", "2",
               "--sample_max_new_tokens", "32", "--pair_mix", '{"correct_vs_wrong": 1.0}')
    v1 = tmp_path / "r" / "dpo" / "v1"
    metrics = json.loads((v1 / "metrics.json").read_text())
    manifest = json.loads((v1 / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["config"]["DPOStageArguments"]["max_train_samples"] == 32

    pairs = [json.loads(line) for line in (v1 / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 32 and {p["kind"] for p in pairs} == {"strip"}
    assert all(p["chosen_tokens"] < p["rejected_tokens"] and "#" not in p["chosen"] and "print('" not in p["chosen"]
               for p in pairs)
    assert metrics["pairs"]["trained"] == {"strip": 32} and metrics["pairs"]["total"] == 32
    # the untrained model's samples are never right: no pair from them, and every problem counted
    assert metrics["samples"]["rows"] == 12 and (v1 / "samples.jsonl").is_file()
    dropped = metrics["pairs"]["dropped"]
    assert dropped["correct_vs_wrong"]["no_correct_solution"] == 6 and dropped["sampled"]["no_correct_solution"] == 6
    assert metrics["pair_build_s"] >= 0 and metrics["sample_s"] > 0

    (evaluated,) = metrics["eval"].values()
    assert evaluated["n"] == 16 and "mean_completion_tokens" in evaluated
    assert "arith:test:16" in metrics["eval_before"] and "arith:test:16" in metrics["eval_delta"]
    logs = json.loads((v1 / "log_history.json").read_text())
    margins = [e["rewards/margins"] for e in logs if "rewards/margins" in e]
    assert len(margins) == 4 and margins[-1] > margins[0]  # 32 pairs / 8 per step, one log per step
    assert metrics["dpo"]["last"]["rewards/accuracies"] is not None
    assert not (v1 / "trainer").exists()

    from eval.report import build

    html_path, _ = build(tmp_path / "r")
    assert (tmp_path / "r" / "report_files" / "dpo.png").is_file()
    assert "DPO preference pairs" in html_path.read_text()

    again = _dpo(tmp_path, tiny_base, data, "--sample_problems", "arith:train:6:9", "--samples_per_problem", "2",
                 "--sample_max_new_tokens", "32", "--pair_mix", '{"correct_vs_wrong": 1.0}')
    assert "already complete" in again.stdout, out.stderr[-2000:]


@pytest.mark.slow
def test_dpo_stage_lora_with_precomputed_reference(tmp_path, tiny_base):
    data = _verbose(tmp_path / "verbose.jsonl", 40)
    _dpo(tmp_path, tiny_base, data, "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8",
         "--lora_target_modules", "q_proj", "v_proj", "--precompute_ref_log_probs", "true", "--eval_data", "none")
    v1 = tmp_path / "r" / "dpo" / "v1"
    assert (v1 / "adapter_config.json").is_file()
    logs = json.loads((v1 / "log_history.json").read_text())
    first = next(e for e in logs if "rewards/margins" in e)
    # the reference is the adapter-free parent, scored before training: at the first step the policy
    # (a zero-initialised adapter) equals it, so the implicit rewards start at 0
    assert abs(first["rewards/chosen"]) < 1e-3 and abs(first["rewards/rejected"]) < 1e-3
