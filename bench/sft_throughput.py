"""SFT training throughput on CPU: ``stages.sft`` against baselines measured in the same run.

    python bench/sft_throughput.py [--quick] [--steps 30] [--threads 2]

Three measurements over the same tiny model, the same data and the same batches (taken from the
SFT trainer's own dataloader, so padding and completion masks are identical):
  1. a bare PyTorch loop: forward, backward, AdamW step, nothing else;
  2. a bare TRL ``SFTTrainer`` script with the recipe's settings;
  3. the ``stages.sft`` stage (recipe ``recipes/tiny/sft.yaml``, evaluation off).
Throughput is real (non-padding) tokens per second of training time. Prints the ratios
stage/bare-loop (target >= 0.7) and stage/bare-TRL (target >= 0.95) and achieved GFLOP/s
(6 * parameters * tokens, the usual dense-transformer estimate, attention excluded).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
RECIPE = REPO / "recipes" / "tiny" / "sft.yaml"


def _recipe_configs(steps: int, out: str):
    from trl import ModelConfig, SFTConfig

    from stages.common.config import parse_config
    from stages.sft import SFTStageArguments

    args, cfg, model_args = parse_config(
        (SFTStageArguments, SFTConfig, ModelConfig),
        ["--config", str(RECIPE), "--train_data", "arith:train:4000", "--max_steps", str(steps), "--output_dir", out, "--save_strategy", "no",
         "--logging_steps", str(steps), "--eval_data", "none"],
    )
    return args, cfg, model_args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="fewer steps (CI smoke run)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    opts = ap.parse_args()
    steps = 8 if opts.quick else opts.steps

    import datasets
    import torch
    from trl import SFTTrainer

    from stages.common.modeling import load_causal_lm, load_tokenizer, materialize_parent
    from stages.harness.supervised import load_solution_rows, to_prompt_completion
    from stages.sft import main as sft_main

    if opts.threads:
        torch.set_num_threads(opts.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    args, cfg, model_args = _recipe_configs(steps, str(tmp / "trl"))
    base = materialize_parent("tiny", tmp / "runs" / "bench").path
    tok = load_tokenizer(base, padding_side="right")
    rows = load_solution_rows(args.train_data, seed=cfg.seed)
    ds = datasets.Dataset.from_list([to_prompt_completion(r) for r in rows])

    def new_trainer():
        torch.manual_seed(cfg.seed)
        model = load_causal_lm(base, model_args)
        return SFTTrainer(model=model, args=copy.deepcopy(cfg), train_dataset=ds, processing_class=tok)

    # the exact batches the trainer will see
    probe = new_trainer()
    batches = []
    for batch in probe.get_train_dataloader():
        batches.append({k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")})
        if len(batches) == steps:
            break
    tokens = int(sum(b["attention_mask"].sum() for b in batches))
    n_params = sum(p.numel() for p in probe.model.parameters())
    del probe

    # 1. bare PyTorch loop
    torch.manual_seed(cfg.seed)
    model = load_causal_lm(base, model_args)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    t0 = time.perf_counter()
    for b in batches:
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    bare_s = time.perf_counter() - t0

    # 2. bare TRL SFTTrainer script
    trainer = new_trainer()
    trl_s = trainer.train().metrics["train_runtime"]

    # 3. the stage
    t0 = time.perf_counter()
    sft_main(["--config", str(RECIPE), "--train_data", "arith:train:4000", "--runs_dir", str(tmp / "runs"), "--run", "bench", "--max_steps", str(steps),
              "--eval_data", "none", "--save_strategy", "no", "--logging_steps", str(steps)])
    stage_wall = time.perf_counter() - t0
    metrics = json.loads((tmp / "runs" / "bench" / "sft" / "latest" / "metrics.json").read_text())
    stage_s = metrics["train"]["train_runtime"]

    res = {
        "steps": steps, "tokens": tokens, "params": n_params, "threads": torch.get_num_threads(),
        "bare_loop_tok_s": tokens / bare_s, "bare_trl_tok_s": tokens / trl_s, "stage_tok_s": tokens / stage_s,
        "stage_wall_s_incl_load_save": stage_wall,
    }
    res["ratio_stage_vs_bare_loop"] = res["stage_tok_s"] / res["bare_loop_tok_s"]
    res["ratio_stage_vs_bare_trl"] = res["stage_tok_s"] / res["bare_trl_tok_s"]
    res["stage_gflop_s"] = 6 * n_params * res["stage_tok_s"] / 1e9
    print(json.dumps(res, indent=2))
    print(f"stage/bare-loop = {res['ratio_stage_vs_bare_loop']:.2f} (target >= 0.70)   "
          f"stage/bare-TRL = {res['ratio_stage_vs_bare_trl']:.2f} (target >= 0.95)   "
          f"{res['stage_gflop_s']:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
