"""DPO training throughput on CPU: the ``stages.dpo`` stage against a bare TRL ``DPOTrainer``
measured in the same run, on the same pairs and model.

    python bench/dpo_throughput.py [--quick] [--check] [--json PATH] [--steps 40] [--threads N]

1. the stage (recipe ``recipes/tiny/dpo.yaml``, evaluation off) from the tiny model, on
   verbose-style verified solutions of the embedded task (a comment before every statement,
   ``pot_style.add_step_comments``): it builds its strip pairs (stripped in the sandbox) and
   trains ``--steps`` steps;
2. a bare ``DPOTrainer`` script with the same ``DPOConfig`` on the pairs the stage trained on
   (its ``pairs.jsonl``), the same model and the same reference (TRL's default: a copy of the
   model).

Throughput is tokens per second of training time (``train_runtime``: the same batches in both, so
the ratio of runtimes); each side runs ``--repeats`` times in alternating order (stage, bare, bare,
stage) and its best run counts, as the machine is shared. Target: stage / bare >= 0.9 (the harness
adds nothing measurable). Ends
with one ``RESULT`` line (met / MISSED); ``--json`` writes the figures, ``--check`` exits 1 on a
miss (the protocol of bench/README.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import REPO, Figure, finish, parser  # noqa: E402  (also puts the repo on sys.path)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
RECIPE = REPO / "recipes" / "tiny" / "dpo.yaml"
TARGET = 0.9


def verbose_solutions(path: Path, n: int) -> Path:
    """Verified rows of ``n`` embedded-task problems, each program with a comment per statement."""
    from stages.common.data import load_problems, write_jsonl
    from stages.common.pot import format_completion
    from stages.common.pot_style import add_step_comments

    rows = []
    for p in load_problems(f"arith:train:{n}:7", seed=0):
        completion = format_completion(add_step_comments(p["program"]) or p["program"])
        rows.append({"id": p["id"], "question": p["question"], "answer": p["answer"], "completion": completion,
                     "executed_answer": p["answer"], "correct": True, "source": "bench",
                     "n_tokens": len(completion.split())})
    write_jsonl(path, rows)
    return path


def main() -> int:
    ap = parser(__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side (alternating order); the best counts")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    opts = ap.parse_args()
    steps = 10 if opts.quick else opts.steps
    opts.repeats = 1 if opts.quick else opts.repeats

    import datasets
    import torch
    from trl import DPOConfig, DPOTrainer, ModelConfig

    from stages.common.config import parse_config
    from stages.common.data import read_jsonl
    from stages.common.modeling import load_causal_lm, load_tokenizer, materialize_parent
    from stages.dpo import main as dpo_main
    from stages.dpo_lib.stage import DPOStageArguments, to_preference

    if opts.threads:
        torch.set_num_threads(opts.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    base = materialize_parent("tiny", tmp / "runs" / "bench").path
    batch = 16
    data = verbose_solutions(tmp / "verified.jsonl", n=steps * batch + 64)
    overrides = ["--model_name_or_path", base, "--train_data", str(data), "--eval_data", "none",
                 "--max_steps", str(steps), "--save_strategy", "no", "--logging_steps", str(steps),
                 "--per_device_train_batch_size", str(batch), "--max_train_samples", str(steps * batch),
                 "--sample_problems", "none"]  # the pairs of the verbose solutions only: no sampling of the policy

    _, cfg, model_args = parse_config((DPOStageArguments, DPOConfig, ModelConfig),
                                      ["--config", str(RECIPE), *overrides, "--output_dir", str(tmp / "bare")])
    runs = {"stage": [], "bare": []}

    def stage(i: int) -> None:
        """1. the stage (a fresh run each time: no skip)"""
        t0 = time.perf_counter()
        dpo_main(["--config", str(RECIPE), "--runs_dir", str(tmp / "runs"), "--run", f"bench{i}", *overrides])
        metrics = json.loads((tmp / "runs" / f"bench{i}" / "dpo" / "latest" / "metrics.json").read_text())
        runs["stage"].append({"train_s": metrics["train"]["train_runtime"], "tokens": metrics.get("train_tokens"),
                              "wall_s": time.perf_counter() - t0, "pair_build_s": metrics.get("pair_build_s"),
                              "pairs": metrics["pairs"]["trained"]})

    def bare(i: int) -> None:
        """2. a bare DPOTrainer on the pairs the stage trained on, the same model and config"""
        pairs = read_jsonl(tmp / "runs" / "bench0" / "dpo" / "latest" / "pairs.jsonl")
        dataset = datasets.Dataset.from_list([to_preference(p) for p in pairs])
        trainer = DPOTrainer(model=load_causal_lm(base, model_args), args=copy.deepcopy(cfg), train_dataset=dataset,
                             processing_class=load_tokenizer(base))
        result = trainer.train()
        runs["bare"].append({"train_s": result.metrics["train_runtime"], "tokens": trainer.state.num_input_tokens_seen})

    # stage, bare, bare, stage, ...: each side gets the warm and the cold positions; the best of each
    # is compared (the machine is shared: the minimum is the least disturbed run)
    for i in range(opts.repeats):
        for run in ((stage, bare) if i % 2 == 0 else (bare, stage)):
            run(i)
    tokens = runs["stage"][0]["tokens"]
    if any(r["tokens"] != tokens for r in runs["stage"] + runs["bare"]):
        raise SystemExit(f"the runs saw different token counts: {runs}")
    stage_s = min(r["train_s"] for r in runs["stage"])
    bare_s = min(r["train_s"] for r in runs["bare"])

    figures = [Figure("stage_vs_bare_dpo", tokens / stage_s, "tokens/s", baseline=tokens / bare_s,
                      baseline_name="bare DPOTrainer", target=TARGET)]
    details = {"steps": steps, "batch": batch, "tokens": tokens, "threads": torch.get_num_threads(),
               "stage_train_s": stage_s, "bare_train_s": bare_s, "runs": runs}
    print(json.dumps(details, indent=2))
    return finish(opts, "dpo_throughput", figures, details)


if __name__ == "__main__":
    sys.exit(main())
