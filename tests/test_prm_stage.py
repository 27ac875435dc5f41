"""The PRM stage end to end on the tiny model: imported labels -> trained PRM -> scorer and CLI;
MC labelling from a policy; config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common.arith import generate_problems

REPO = Path(__file__).resolve().parents[1]


def _stepwise_rows(n: int) -> list[dict]:
    """Reference programs (every step correct) and copies whose one step multiplies by zero
    (that step and the ones after it wrong)."""
    rows = []
    for i, p in enumerate(generate_problems(n, split="train", seed=3)):
        steps = p["program"].splitlines()
        rows.append({"prompt": p["question"], "completions": steps, "labels": [True] * len(steps)})
        k = 1 + i % (len(steps) - 1)
        bad = steps[:k] + [steps[k] + " * 0"] + steps[k + 1 :]
        rows.append({"prompt": p["question"], "completions": bad,
                     "labels": [True] * k + [False] * (len(steps) - k)})
    return rows


def _recipe(tmp_path: Path, **over) -> Path:
    base = {"model_name_or_path": "tiny", "dtype": "float32", "attn_implementation": "eager", "policy": "tiny",
            "use_cpu": True, "seed": 0, "learning_rate": 3e-3, "num_train_epochs": 3,
            "per_device_train_batch_size": 16, "save_strategy": "no", "report_to": "none",
            "eval_fraction": 0.25, "bon_problems": "none", "max_length": 256}
    base.update(over)
    path = tmp_path / "prm.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in base.items()))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["token_classification", "implicit_lora"])
def test_imported_labels_train_a_prm_that_finds_the_wrong_step(tmp_path, kind):
    from stages.prm import main
    from stages.prm_lib.scorer import PRMScorer

    data = tmp_path / "steps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _stepwise_rows(120)))
    extra = {"prm_type": "implicit", "use_peft": True, "lora_r": 8} if kind == "implicit_lora" else {}
    recipe = _recipe(tmp_path, label_source="import", import_files=[str(data)], import_format="stepwise", **extra)
    out = main(["--config", str(recipe), "--runs_dir", str(tmp_path / "runs"), "--run", "r"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["steps"]["roc_auc"] > 0.8, metrics["eval"]
    assert (out / "prm_config.json").is_file() and (out / "manifest.json").is_file()
    # an implicit PRM is a plain causal LM (LoRA merged) with its frozen reference inside the checkpoint
    assert (out / "reference" / "config.json").is_file() == (kind == "implicit_lora")
    assert not (out / "adapter_config.json").exists()
    scorer = PRMScorer(tmp_path / "runs" / "r" / "prm")
    p = generate_problems(3, split="test", seed=5)[2]
    good = "```python\n" + p["program"] + "\n```"
    lines = p["program"].splitlines()
    bad = "```python\n" + "\n".join(lines[:1] + [lines[1] + " * 0"] + lines[2:]) + "\n```"
    s_good, s_bad = scorer.score([p["question"]] * 2, [good, bad])
    assert len(s_good) == len(s_bad) == len(lines)
    assert s_bad[0] == pytest.approx(s_good[0], abs=1e-5)  # same first step, causal backbone: same score
    assert s_bad[1] < 0.5 < s_good[1]  # the corrupted step is flagged, its correct twin is not
    # the CLI writes the same scores
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"question": p["question"], "completion": bad}) + "\n")
    res = subprocess.run([sys.executable, "-m", "stages.prm", "score", str(inp), "-o", str(tmp_path / "o.jsonl"),
                          "--checkpoint", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    row = json.loads((tmp_path / "o.jsonl").read_text())
    assert row["step_scores"] == pytest.approx(s_bad, abs=1e-4) and row["prm_min"] == pytest.approx(min(s_bad))


@pytest.mark.slow
def test_implicit_prm_under_accelerate_with_two_processes(tmp_path):
    data = tmp_path / "steps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _stepwise_rows(120)))
    recipe = _recipe(tmp_path, label_source="import", import_files=[str(data)], import_format="stepwise",
                     prm_type="implicit")
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", "accelerate_configs/cpu.yaml",
           "--num_processes", "2", "-m", "stages.prm", "--config", str(recipe), "--runs_dir", str(tmp_path / "runs"),
           "--run", "ddp"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    v1 = tmp_path / "runs" / "ddp" / "prm" / "v1"
    assert json.loads((v1 / "manifest.json").read_text())["config"]["world_size"] == 2
    # 240 rows, a quarter held out: 180 rows, batch 16 per process, 2 processes, 3 epochs
    assert json.loads((v1 / "log_history.json").read_text())[-1]["step"] == 18
    assert json.loads((v1 / "metrics.json").read_text())["eval"]["steps"]["roc_auc"] > 0.8
    assert (v1 / "reference" / "model.safetensors").is_file()


@pytest.mark.slow
def test_mc_labels_from_a_policy_and_best_of_n(tmp_path, monkeypatch):
    from stages.prm import main
    from stages.prm_lib import stage as prm_stage

    # mistake mining filters by fail rate: the untrained policy fails everything, so [0.5, 1] keeps all
    recipe = _recipe(tmp_path, label_source="mc", label_problems="arith:train:4", samples_per_problem=2,
                     mining="filter", fail_rate_low=0.5, fail_rate_high=1.0, mined_problems=3,
                     max_label_solutions=4, mc_rollouts=2, gen_max_new_tokens=16, bon_problems="arith:test:3",
                     bon_n=2, num_train_epochs=1)
    runs = tmp_path / "runs"
    argv = ["--config", str(recipe), "--runs_dir", str(runs), "--run", "r"]
    assert main(argv + ["--dry_run"]) is None and not (runs / "r" / "prm").exists()
    loaded = []
    load_policy = prm_stage.load_policy
    monkeypatch.setattr(prm_stage, "load_policy", lambda path, args: loaded.append(args) or load_policy(path, args))
    out = main(argv)
    # the policy gets the recipe's dtype and attention (not the backbone's LoRA / quantization)
    assert [(a.dtype, a.attn_implementation, a.use_peft) for a in loaded] == [("float32", "eager", False)]
    metrics = json.loads((out / "metrics.json").read_text())
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert metrics["labels"]["mining"] == "filter" and metrics["labels"]["problems_kept"] == 3
    assert len({r["id"] for r in labels}) <= 3
    assert metrics["labels"]["solutions"] == len(labels) > 0
    assert all(len(r["labels"]) == len(r["completions"]) == len(r["soft_labels"]) for r in labels)
    assert metrics["best_of_n"]["n_problems"] == 3 and "random" in metrics["best_of_n"]
    assert main(argv) == out  # same parent, config and data: skipped


def test_config_errors_name_the_field(tmp_path):
    from stages.common.config import ConfigError
    from stages.prm import main

    with pytest.raises(ConfigError, match="label_source"):
        main(["--config", str(_recipe(tmp_path, label_source="oracle")), "--runs_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="class_weights"):
        main(["--config", str(_recipe(tmp_path, class_weights=[1.0])), "--runs_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="prm_type"):
        main(["--config", str(_recipe(tmp_path, prm_type="value_head")), "--runs_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="three"):
        main(["--config", str(_recipe(tmp_path, prm_type="implicit", label_mode="three")), "--runs_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="mining"):
        main(["--config", str(_recipe(tmp_path, mining="sort")), "--runs_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="fail_rate_low"):
        main(["--config", str(_recipe(tmp_path, fail_rate_low=0.9, fail_rate_high=0.3)), "--runs_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="judge"):
        main(["--config", str(_recipe(tmp_path, judge="claude")), "--runs_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="use_peft"):
        main(["--config", str(_recipe(tmp_path, prm_type="embeddings", use_peft=True)), "--runs_dir", str(tmp_path)])
