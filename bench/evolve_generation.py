"""Evolve's sampling path against a bare batched ``model.generate`` loop, and the share of the
sandbox and the PRM in the stage's time, measured in the same run.

    python bench/evolve_generation.py [--quick] [--check] [--json PATH]
        [--policy runs/tiny/grpo] [--prm runs/tiny/prm] [--recipe recipes/tiny/evolve.yaml]
        [--problems 96] [--repeats 2]

The workload is the recipe's (``--recipe``, parsed as the stage parses it): its problem sources in
their proportions (scaled to ``--problems``, drawn with another seed than the stage's), samples per
problem, decoding, batch size, keep filter and tree options. The policy defaults to the stage's
parent in the default run (grpo), the PRM to that run's.
  1. bare: ``model.generate`` over batches of prompts (``num_return_sequences`` = N) on the policy
     loaded with transformers' defaults, nothing else timed (the tokens are counted afterwards, the
     same way as for the stage);
  2. the stage's sampling path (``stages.evolve_lib.sampling.TransformersSampler``) on the policy
     loaded as the stage loads it (the recipe's dtype and attention: the tiny recipes train with
     eager attention, and generation switches to SDPA, ``stages.common.generation``): templated
     prompts, length-sorted batches, decoding and token counting included;
  3. the stage itself (``python -m stages.evolve`` with the recipe, on these problems, in a
     temporary run folder that links the policy's run; no pass@1 eval): its metrics give the
     sandbox and PRM seconds, its sampling (generation, scoring, tree exploration and the
     equal-token control) and its build (sampling and the fine-tuning round).
Targets: stage tokens/s >= 0.8 x bare tokens/s; sandbox + PRM <= 20% of the stage's time (its
build; the harness's evals are left out, which only makes the share larger). Their share of the
sampling alone is reported beside it.
Without a policy and a PRM the benchmark reports ``skipped``.

Output: the figures as JSON, then one line ``RESULT evolve_generation: ... -> all targets met``
(or ``MISSED: ...``); ``--json PATH`` also writes the record, ``--check`` exits 1 on a miss.
(The flags, the line and the record: bench/_harness.py, the bench/ protocol.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
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
    ap.add_argument("--policy", default=None,
                    help="policy checkpoint (default: the one evolve samples from in runs/tiny: its newest policy "
                         "before evolve, grpo)")
    ap.add_argument("--prm", default=None, help="PRM checkpoint (default: runs/tiny/prm)")
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "tiny" / "evolve.yaml"),
                    help="the evolve recipe whose problems, sampling and tree options make the workload")
    ap.add_argument("--problems", type=int, default=96)
    ap.add_argument("--samples", type=int, default=None, help="samples per problem (default: the recipe's)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--batch-size", type=int, default=None, help="prompts per generate call (default: the recipe's)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats of bare and stage (best kept)")
    ap.add_argument("--threads", type=int, default=None)
    return ap


def _default_checkpoints(opts) -> tuple[str | None, str | None]:
    from stages.common.checkpoint import CheckpointError, resolve_policy

    run = REPO / "runs" / "tiny"
    policy, prm = opts.policy, opts.prm
    if policy is None:
        try:  # the policy evolve samples from in the default run: the newest before evolve (grpo)
            policy = resolve_policy("@latest_policy", run, stage="evolve")
        except CheckpointError:
            policy = None
    if prm is None and (run / "prm").is_dir():
        prm = str(run / "prm")
    return policy, prm


def _recipe_workload(opts):
    """The recipe parsed as the stage parses it (its arguments, checked), its problem sources with
    their counts scaled to ``opts.problems`` (each source keeps its share) and drawn with seed 11
    (the stage draws its own), and the recipe's values for the options not given here."""
    from stages.common.config import parse_config
    from stages.evolve_lib.stage import check_options, evolve_stage

    stage = evolve_stage()
    args, _, model_args = parse_config(stage.config_types, ["--config", opts.recipe], prog=NAME)
    sources = [spec.split(":") for spec in args.train_data]  # arith:<split>:<n>[:seed][:levels=...]
    bad = [spec for spec, parts in zip(args.train_data, sources, strict=True)
           if parts[0] != "arith" or len(parts) < 3 or not parts[2].isdigit()]
    if bad:
        raise SystemExit(f"{NAME}: {opts.recipe}: train_data {bad}: this benchmark scales 'arith:<split>:<n>' "
                         "sources only; pass --recipe with such sources")
    counts = [int(parts[2]) for parts in sources]
    specs, left = [], opts.problems
    for k, parts in enumerate(sources):
        count = left if k == len(counts) - 1 else max(1, round(opts.problems * counts[k] / sum(counts)))
        left -= count
        levels = [x for x in parts[3:] if x.startswith("levels=")]
        specs.append(":".join([parts[0], parts[1], str(count), "11", *levels]))
    for name, value in (("samples", args.num_samples), ("max_new_tokens", args.max_new_tokens),
                        ("batch_size", args.generation_batch_size)):
        if getattr(opts, name) is None:
            setattr(opts, name, value)
    return specs, (args, model_args), check_options(args)


def _run_stage(opts, specs: list[str], policy_path: str, prm_path: str) -> dict:
    """The evolve stage on ``specs`` in a temporary run folder that links the policy's run (its
    ``@synth`` for the recipe's mix); its metrics.json and wall seconds."""
    import yaml

    from stages.common.checkpoint import resolve_parent

    policy_run = Path(resolve_parent(policy_path).path).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="bench-evolve-") as tmp:
        run = Path(tmp) / "bench"
        run.mkdir()
        for name in ("base", "synth", "sft"):
            if (policy_run / name).is_dir():
                (run / name).symlink_to(policy_run / name)
        overrides = {"base": str(Path(opts.recipe).resolve()), "train_data": specs, "eval_data": ["none"],
                     "eval_before": False, "model_name_or_path": str(Path(policy_path).resolve()),
                     "prm_checkpoint": str(Path(prm_path).resolve()),
                     "num_samples": opts.samples, "max_new_tokens": opts.max_new_tokens,
                     "generation_batch_size": opts.batch_size}
        if not (run / "synth").is_dir():  # no teacher data to mix in beside this policy
            overrides.update(mix_data=[], mix_ratio=0.0)
        recipe = Path(tmp) / "evolve.yaml"
        recipe.write_text(yaml.safe_dump(overrides, sort_keys=False))
        cmd = [sys.executable, "-m", "stages.evolve", "--config", str(recipe), "--run", "bench", "--runs_dir", tmp]
        t0 = time.perf_counter()
        env = {**os.environ, **({"OMP_NUM_THREADS": str(opts.threads)} if opts.threads else {})}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        metrics = json.loads((run / "evolve" / "latest" / "metrics.json").read_text())
    return {"metrics": metrics, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    if opts.quick:
        opts.problems, opts.repeats = min(opts.problems, 32), 1
    specs, (args, model_args), _ = _recipe_workload(opts)
    policy_path, prm_path = _default_checkpoints(opts)
    if policy_path is None or prm_path is None:
        return finish(opts, NAME, [], {}, skipped="no policy or PRM checkpoint: run ./run_pipeline.sh first, or pass "
                                             "--policy and --prm")
    import torch
    from transformers import AutoModelForCausalLM

    from stages.common.checkpoint import resolve_parent
    from stages.common.data import load_problems
    from stages.common.generation import chat_prompts
    from stages.evolve_lib.sampling import TransformersSampler
    from stages.harness.policy import load_policy

    if opts.threads:
        torch.set_num_threads(opts.threads)
    folder = resolve_parent(policy_path).path
    policy = load_policy(folder, model_args)  # as the stage loads it: the recipe's dtype and attention
    model, tok = policy.model, policy.tokenizer
    model.eval()
    bare_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()  # transformers' defaults
    problems = [p for spec in specs for p in load_problems(spec, seed=0)]
    prompts = chat_prompts(tok, [p["question"] for p in problems])
    temperature, top_p = args.temperature, args.top_p
    sampling = {"temperature": temperature, "top_p": top_p, "max_new_tokens": opts.max_new_tokens}
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
                out = bare_model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=None,
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

    stage_run = _run_stage(opts, specs, policy_path, prm_path)
    round_metrics = stage_run["metrics"]["rounds"][0]
    share = stage_run["metrics"]["scoring_share_of_build"]  # the stage's own figure: (sandbox + PRM) / build
    build_s = stage_run["metrics"]["build_wall_s"]
    figures = [
        Figure("stage/bare tokens per s", stage_tok_s, "tok/s", baseline=bare_tok_s,
               baseline_name="bare batched model.generate loop", target=TARGET_RATIO),
        Figure("sandbox+PRM share of the stage's time", share, "fraction", target=TARGET_SCORING_SHARE,
               direction=ATMOST, target_of="value"),
        Figure("sandbox+PRM share of the stage's sampling", round_metrics["scoring_share_of_sampling"], "fraction",
               note="generation, scoring, tree and control; the fine-tuning left out (no target)"),
    ]
    details = {"policy": policy_path, "prm": prm_path, "recipe": opts.recipe, "problem_sources": specs,
               "problems": len(problems), "samples": opts.samples, "max_new_tokens": opts.max_new_tokens,
               "threads": torch.get_num_threads(), "bare_tok_s": bare_runs, "stage_tok_s": stage_runs,
               "stage_wall_s": round(stage_run["wall_s"], 3), "stage_build_s": build_s,
               "stage_sampling_s": round_metrics["generation_wall_s"], "stage_train_s": round_metrics["train_wall_s"],
               "stage_generation_s": round_metrics["generation_s"], "stage_sandbox_s": round_metrics["sandbox_s"],
               "stage_prm_s": round_metrics["prm_s"], "stage_generated_tokens_per_s": round_metrics[
                   "generated_tokens_per_s"], "stage_kept": round_metrics["kept"],
               "median_ratio": statistics.median(s / b for s, b in zip(stage_runs, bare_runs, strict=True))}
    print(json.dumps(details, indent=2))
    return finish(opts, NAME, figures, details)


if __name__ == "__main__":
    sys.exit(main())
