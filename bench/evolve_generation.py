"""Evolve's sampling path against a bare batched ``model.generate`` loop, and the share of the
sandbox and the PRM in a round's sampling work, measured in the same run.

    python bench/evolve_generation.py [--quick] [--check] [--json PATH]
        [--policy runs/tiny/grpo] [--prm runs/tiny/prm] [--problems 96] [--samples 8] [--repeats 2]

Same policy, same chat prompts (arithmetic train problems), same sampling settings and batch size:
  1. bare: ``model.generate`` over batches of prompts (``num_return_sequences`` = N), nothing else
     timed (the tokens are counted afterwards, the same way as for the stage);
  2. the stage's sampling path (``stages.evolve_lib.sampling.TransformersSampler``: templated
     prompts, length-sorted batches, decoding and token counting included);
  3. one round's work of the stage on these problems (``stages.evolve_lib.worker.Worker``:
     best-of-N, sandbox, PRM, tree exploration and the equal-token control), timed by phase.
Targets: stage tokens/s >= 0.8 x bare tokens/s; sandbox + PRM <= 20% of the round's sampling time.
The policy and PRM default to this machine's tiny pipeline run (``./run_pipeline.sh``); without
them the benchmark reports ``skipped``.

Output: the figures as JSON, then one line ``RESULT evolve_generation: ... -> all targets met``
(or ``MISSED: ...``); ``--json PATH`` also writes the record, ``--check`` exits 1 on a miss.
(The flags, the line and the record: bench/_harness.py, the bench/ protocol.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import ATMOST, REPO, Figure, finish, parser  # noqa: E402  (also puts the repo on sys.path)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
NAME = "evolve_generation"
TARGET_RATIO = 0.8
TARGET_SCORING_SHARE = 0.2


def _parser() -> argparse.ArgumentParser:
    ap = parser(__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=None, help="policy checkpoint (default: runs/tiny's latest policy)")
    ap.add_argument("--prm", default=None, help="PRM checkpoint (default: runs/tiny/prm)")
    ap.add_argument("--problems", type=int, default=96)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (the tiny recipe's)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats of bare and stage (best kept)")
    ap.add_argument("--threads", type=int, default=None)
    return ap


def _default_checkpoints(opts) -> tuple[str | None, str | None]:
    from stages.common.checkpoint import CheckpointError, resolve_policy

    run = REPO / "runs" / "tiny"
    policy, prm = opts.policy, opts.prm
    if policy is None:
        try:
            policy = resolve_policy("@latest_policy", run)
        except CheckpointError:
            policy = None
    if prm is None and (run / "prm").is_dir():
        prm = str(run / "prm")
    return policy, prm


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    if opts.quick:
        opts.problems, opts.repeats = min(opts.problems, 32), 1
    policy_path, prm_path = _default_checkpoints(opts)
    if policy_path is None or prm_path is None:
        return finish(opts, NAME, [], {}, skipped="no policy or PRM checkpoint: run ./run_pipeline.sh first, or pass "
                                             "--policy and --prm")
    import torch

    from stages.common.checkpoint import resolve_parent
    from stages.common.data import load_problems
    from stages.common.generation import chat_prompts
    from stages.evolve_lib.sampling import SolutionScorer, TransformersSampler
    from stages.evolve_lib.tree import TreeOptions
    from stages.evolve_lib.worker import SamplingOptions, Worker
    from stages.harness.policy import load_policy
    from stages.prm_lib.scorer import PRMScorer

    if opts.threads:
        torch.set_num_threads(opts.threads)
    policy = load_policy(resolve_parent(policy_path).path)
    model, tok = policy.model, policy.tokenizer
    model.eval()
    problems = load_problems(f"arith:train:{opts.problems}:11", seed=0)
    prompts = chat_prompts(tok, [p["question"] for p in problems])
    sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": opts.max_new_tokens}
    stop = sorted({tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} - {None})

    def count(texts: list[str]) -> int:
        return sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])

    def bare() -> tuple[float, int]:
        torch.manual_seed(0)
        tok.padding_side = "left"
        outs, elapsed = [], 0.0
        with torch.inference_mode():
            for start in range(0, len(prompts), opts.batch_size):
                enc = tok(prompts[start : start + opts.batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False)
                t0 = time.perf_counter()
                out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=None,
                                     max_new_tokens=opts.max_new_tokens, num_return_sequences=opts.samples,
                                     eos_token_id=stop, pad_token_id=tok.pad_token_id)
                elapsed += time.perf_counter() - t0
                outs.append(out[:, enc["input_ids"].shape[1] :])
        texts = [t for o in outs for t in tok.batch_decode(o, skip_special_tokens=True)]
        return elapsed, count(texts)

    sampler = TransformersSampler(model, tok, batch_size=opts.batch_size)

    def stage() -> tuple[float, int]:
        t0 = time.perf_counter()
        outs = sampler.generate(prompts, opts.samples, seed=0, **sampling)
        elapsed = time.perf_counter() - t0
        return elapsed, sum(k for out in outs for _, k in out)

    bare_runs, stage_runs = [], []
    bare()  # warm-up
    for _ in range(opts.repeats):
        s, n = bare()
        bare_runs.append(n / s)
        s, n = stage()
        stage_runs.append(n / s)
    bare_tok_s, stage_tok_s = max(bare_runs), max(stage_runs)

    prm = PRMScorer(prm_path, batch_size=64, device="cpu")
    worker = Worker(sampler, SolutionScorer(prm, "min"), tok,
                    SamplingOptions(num_samples=opts.samples, max_new_tokens=opts.max_new_tokens, threshold=0.0,
                                    tree=TreeOptions(token_budget=512, threshold=0.0), compare_bon=True))
    t0 = time.perf_counter()
    rows, summaries = worker.run(problems, seed=0, kept_before={})
    round_s = time.perf_counter() - t0
    t = worker.timings
    share = (t.sandbox_s + t.prm_s) / round_s
    figures = [
        Figure("stage/bare tokens per s", stage_tok_s, "tok/s", baseline=bare_tok_s,
               baseline_name="bare batched model.generate loop", target=TARGET_RATIO),
        Figure("sandbox+PRM share of a round", share, "fraction", target=TARGET_SCORING_SHARE, direction=ATMOST,
               target_of="value"),
    ]
    details = {"policy": policy_path, "prm": prm_path, "problems": len(problems), "samples": opts.samples,
               "threads": torch.get_num_threads(), "bare_tok_s": bare_runs, "stage_tok_s": stage_runs,
               "round_s": round(round_s, 3), "round_timings": t.to_json(),
               "round_solutions": len(rows), "tree_problems": sum(bool(s.get("tree")) for s in summaries),
               "median_ratio": statistics.median(s / b for s, b in zip(stage_runs, bare_runs, strict=True))}
    print(json.dumps(details, indent=2))
    return finish(opts, NAME, figures, details)


if __name__ == "__main__":
    sys.exit(main())
