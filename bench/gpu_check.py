"""The one-shot GPU check of the real-model path (bench/gpu_check.sh runs it; about 5 minutes on one H100/H200).

    python bench/gpu_check.py [--out bench/results/gpu_check.json] [--work DIR]
    python bench/gpu_check.py --cpu-smoke          # the same code paths at toy size on CPU (the test suite runs it)

On Qwen2.5-Math-1.5B's full shape (28 layers, random weights, bf16, SDPA attention, transformers generation;
stages.common.qwen_shape builds it, no hub needed):

1. SFT throughput of a bare PyTorch loop (bf16 weights, fused AdamW, gradient checkpointing, sequences of
   4096 tokens): tokens/s and MFU against the GPU's bf16 peak (TRL's own flop count and peak table;
   target >= 40%);
2. the sft stage (TRL SFTTrainer, ``python -m stages.sft`` from recipes/qwen2.5-math-1.5b/sft.yaml) on
   batches of the same shape: tokens/s and its ratio to the bare loop (target >= 0.9);
3. 3 steps of the grpo stage with transformers generation (the recipe's rewards without the PRM bonus, which
   scores correct answers only: random weights write none): the step-time split and rollout tokens/s;
4. a short prm stage run (token classification, LoRA) and PRM scoring throughput (PRMScorer);
5. each stage's peak memory (``torch.cuda.max_memory_allocated``, bench/memory_probe.py) against
   plan-memory's estimate for the same run and against 40 GiB (one A100 40GB);
6. ZeRO-2 and ZeRO-3 on one GPU when deepspeed is installed, else stated.

Prints one summary table and writes it as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
RECIPES = REPO / "recipes" / "qwen2.5-math-1.5b"
A100_40GB = 40 * (1 << 30)

FULL = {"layers": 28, "overrides": None, "seq": 4096, "batch": 8, "sft_steps": 10, "bare_steps": 10,
        "grpo_batch": 16, "grpo_completion": 256, "grpo_steps": 3, "prm_steps": 5, "prm_length": 1024,
        "score_solutions": 512, "dtype": "bfloat16"}
# Toy size: a narrow 2-layer model with the real vocabulary, a few steps of each stage, on CPU.
SMOKE = {"layers": 2, "overrides": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                                    "num_key_value_heads": 2}, "seq": 96, "batch": 2, "sft_steps": 2, "bare_steps": 2,
         "grpo_batch": 4, "grpo_completion": 8, "grpo_steps": 2, "prm_steps": 2, "prm_length": 96,
         "score_solutions": 16, "dtype": "float32"}


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def _log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sft_rows(tokenizer, n: int, seq: int) -> list[dict]:
    """Verified-solution rows whose chat-templated text is longer than ``seq`` tokens (the stage truncates
    them to max_length = seq, so every training sequence has exactly ``seq`` tokens)."""
    from stages.common.arith import generate_problems
    from stages.common.pot import format_completion

    rows = []
    for p in generate_problems(n, split="train", seed=11):
        program = p["program"]
        per_copy = len(tokenizer(program + "\n", add_special_tokens=False)["input_ids"])
        lines = [program] * (seq // max(1, per_copy) + 2)
        rows.append({"id": p["id"], "question": p["question"], "answer": p["answer"],
                     "completion": format_completion("\n".join(lines)), "executed_answer": p["answer"],
                     "correct": True, "source": "gpu_check", "n_tokens": seq})
    return rows


def bare_loop(model_dir: Path, rows: list[dict], size: dict, device: str) -> dict:
    """Forward, backward and a fused AdamW step on the rows' chat-templated tokens, nothing else. The loss goes
    through TRL's chunked LM head (``add_fused_lm_head``), as in the sft stage, so that both compute the same."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from stages.common.modeling import load_causal_lm, load_tokenizer
    from stages.common.pot import build_messages

    tok = load_tokenizer(str(model_dir), padding_side="right")
    dtype = getattr(torch, size["dtype"])
    model = load_causal_lm(str(model_dir), dtype=dtype, attn_implementation="sdpa").to(device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    add_fused_lm_head(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    batches = []
    for start in range(0, size["bare_steps"] * size["batch"], size["batch"]):
        ids = []
        for r in rows[start:start + size["batch"]]:
            text = tok.apply_chat_template(build_messages(r["question"]) + [
                {"role": "assistant", "content": r["completion"]}], tokenize=False)
            ids.append(tok(text, add_special_tokens=False)["input_ids"][: size["seq"]])
        batches.append(torch.tensor(ids))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    tokens = 0
    for ids in batches:
        ids = ids.to(device)
        loss = model(input_ids=ids, labels=ids, fused_lm_head=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += ids.numel()
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    out = {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "steps": len(batches),
           "micro_batch": size["batch"], "seq_len": size["seq"]}
    if device == "cuda":
        out["peak_bytes"] = torch.cuda.max_memory_allocated()
    del model, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def mfu(model_dir: Path, tokens_per_s: float, seq: int, device: str) -> dict:
    """MFU with TRL's flop count (3 x forward, attention included) against the GPU's dense bf16 peak."""
    import torch
    from transformers import AutoConfig
    from trl.trainer.utils import compute_flops_per_token, compute_mfu, get_peak_flops

    config = AutoConfig.from_pretrained(model_dir)
    flops = compute_flops_per_token(config, seq)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = get_peak_flops(name, "bfloat16") if device == "cuda" else None
    return {"flops_per_token": flops, "achieved_tflops": flops * tokens_per_s / 1e12, "peak_tflops":
            peak / 1e12 if peak else None, "mfu_percent": compute_mfu(flops, tokens_per_s, 1, peak) if peak else None}


def run_stage(stage: str, model_dir: Path, work: Path, size: dict, *extra: str, config: str | None = None,
              launcher: list[str] | None = None) -> dict:
    """One stage run under bench/memory_probe.py; returns its metrics, log history and probe record."""
    probe = work / f"probe-{stage}{'-' + Path(config).stem if config else ''}.json"
    precision = ["--bf16", "true", "--dtype", "bfloat16"] if size["dtype"] == "bfloat16" else [
        "--bf16", "false", "--dtype", "float32"]
    cpu = ["--use_cpu", "true"] if size is SMOKE else []
    run = f"{stage}-{Path(config).stem}" if config else stage
    stage_cmd = ["-m", f"stages.{stage}", "--config", str(RECIPES / f"{stage}.yaml"), "--model_name_or_path",
                 str(model_dir), "--runs_dir", str(work / "runs"), "--run", run, "--report_to", "none",
                 "--save_strategy", "no", "--logging_steps", "1", "--gradient_accumulation_steps", "1",
                 "--dataloader_num_workers", "0", "--attn_implementation", "sdpa", *precision, *cpu, *extra]
    cmd = [sys.executable, str(REPO / "bench" / "memory_probe.py"), "--out", str(probe), "--", *stage_cmd]
    if launcher:
        cmd = [*launcher, str(REPO / "bench" / "memory_probe.py"), "--out", str(probe), "--", *stage_cmd]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - t0
    (work / f"{run}.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ''}",
                "wall_s": wall, "log": str(work / f"{run}.log")}
    ckpt = (work / "runs" / run / stage / "latest").resolve()
    return {"metrics": json.loads((ckpt / "metrics.json").read_text()),
            "log_history": json.loads((ckpt / "log_history.json").read_text()),
            "probe": json.loads(probe.read_text()), "wall_s": wall, "checkpoint": str(ckpt)}


def memory_row(name: str, result: dict) -> dict:
    probe = result.get("probe") or {}
    peak, plan = probe.get("train_peak_bytes"), probe.get("plan_bytes")
    return {"stage": name, "peak_gib": round(peak / (1 << 30), 2) if peak else None,
            "plan_gib": round(plan / (1 << 30), 2) if plan else None,
            "peak_over_plan": round(peak / plan, 3) if peak and plan else None,
            "fits_40gib": (peak < A100_40GB) if peak else None}


def prm_scoring(prm_dir: Path, n: int, device: str) -> dict:
    """PRMScorer throughput: 8-step arithmetic programs, batch 64."""
    from stages.common.arith import generate_problems
    from stages.common.pot import format_completion
    from stages.prm_lib.scorer import PRMScorer

    problems = generate_problems(n, split="test", seed=5)
    scorer = PRMScorer(prm_dir, batch_size=64, device=device)
    questions = [p["question"] for p in problems]
    solutions = [format_completion(p["program"]) for p in problems]
    scorer.score(questions[:8], solutions[:8])  # warm-up
    t0 = time.perf_counter()
    scores = scorer.score(questions, solutions)
    wall = time.perf_counter() - t0
    steps = sum(len(s) for s in scores)
    return {"solutions": n, "steps": steps, "wall_s": wall, "solutions_per_s": n / wall, "steps_per_s": steps / wall}


def table(summary: dict) -> str:
    rows = [("check", "value", "target / note")]
    bare, sft = summary.get("bare_loop", {}), summary.get("sft_stage", {})
    if bare:
        rows.append(("bare loop tokens/s", f"{bare['tokens_per_s']:.0f}",
                     f"{bare['micro_batch']} x {bare['seq_len']} tokens, bf16, GC"))
        m = summary.get("mfu", {})
        rows.append(("bare loop MFU", f"{m['mfu_percent']:.1f}%" if m.get("mfu_percent") else "n/a",
                     ">= 40%" + (f" of {m['peak_tflops']:.0f} TFLOPS" if m.get("peak_tflops") else "")))
    if sft.get("tokens_per_s"):
        rows.append(("sft stage tokens/s", f"{sft['tokens_per_s']:.0f}", "SFTTrainer, same batch shape"))
        rows.append(("sft stage / bare loop", f"{sft['ratio_to_bare']:.2f}", ">= 0.9"))
    grpo = summary.get("grpo", {})
    if grpo.get("split"):
        s = grpo["split"]
        rows.append(("grpo step split", f"gen {s['generation_share']:.0%} / rewards {s['rewards_share']:.0%} / "
                     f"opt {s['optimisation_share']:.0%}", f"{grpo['steps']} steps, {s['step_s']:.1f} s"))
        rows.append(("grpo rollout tokens/s", f"{grpo['rollout_tokens_per_s']:.0f}", "transformers generate"))
    score = summary.get("prm_scoring", {})
    if score.get("solutions_per_s"):
        rows.append(("PRM scoring", f"{score['solutions_per_s']:.1f} solutions/s",
                     f"{score['steps_per_s']:.0f} steps/s, batch 64"))
    for m in summary.get("memory", []):
        if m.get("peak_gib") is not None:
            rows.append((f"peak memory {m['stage']}", f"{m['peak_gib']:.2f} GiB",
                         f"plan {m['plan_gib']} GiB (x{m['peak_over_plan']}), "
                         f"{'fits' if m['fits_40gib'] else 'OVER'} 40 GiB"))
    for name, note in summary.get("zero", {}).items():
        rows.append((name, note, ""))
    for name, err in summary.get("errors", {}).items():
        rows.append((f"{name} FAILED", err[:60], ""))
    width = [max(len(str(r[i])) for r in rows) for i in range(3)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, width, strict=True)) for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="toy sizes on CPU: check that every part runs")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_check.json"))
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed at the end)")
    opts = ap.parse_args()
    import torch

    from stages.common.modeling import load_tokenizer
    from stages.common.qwen_shape import build_qwen_shape_checkpoint

    size = SMOKE if opts.cpu_smoke else FULL
    device = "cuda" if torch.cuda.is_available() and not opts.cpu_smoke else "cpu"
    if device == "cpu" and not opts.cpu_smoke:
        print("gpu_check: no CUDA device; run with --cpu-smoke on CPU", file=sys.stderr)
        return 2
    work = Path(opts.work) if opts.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    summary: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)",
                     "date": time.strftime("%Y-%m-%d"), "size": {k: v for k, v in size.items() if k != "overrides"},
                     "versions": _versions(), "errors": {}, "memory": []}
    _log(f"building the model ({size['layers']} layers) in {work}")
    model_dir = build_qwen_shape_checkpoint(work / "model", num_layers=size["layers"], dtype=size["dtype"],
                                            overrides=size["overrides"], device=device)
    tok = load_tokenizer(str(model_dir))
    rows = sft_rows(tok, max(size["sft_steps"], size["bare_steps"]) * size["batch"], size["seq"])
    data = work / "sft_rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    _log("bare PyTorch loop")
    try:
        bare = bare_loop(model_dir, rows, size, device)
        summary["bare_loop"] = bare
        summary["mfu"] = mfu(model_dir, bare["tokens_per_s"], size["seq"], device)
        if "peak_bytes" in bare:
            summary["memory"].append({"stage": "bare loop", "peak_gib": round(bare["peak_bytes"] / (1 << 30), 2),
                                      "plan_gib": None, "peak_over_plan": None,
                                      "fits_40gib": bare["peak_bytes"] < A100_40GB})
    except Exception as e:  # a failing part is reported in the table; the other parts still run
        summary["errors"]["bare loop"] = f"{type(e).__name__}: {e}"

    _log("sft stage")
    sft = run_stage("sft", model_dir, work, size, "--train_data", str(data), "--max_length", str(size["seq"]),
                    "--per_device_train_batch_size", str(size["batch"]), "--max_steps", str(size["sft_steps"]),
                    "--eval_data", "none", "--activation_checkpointing", "true", "--train_sampling_strategy", "random")
    if "error" in sft:
        summary["errors"]["sft stage"] = sft["error"]
    else:
        tps = sft["metrics"].get("train_tokens_per_s")
        summary["sft_stage"] = {"tokens_per_s": tps, "wall_s": sft["metrics"].get("train_wall_s"),
                                "ratio_to_bare": tps / summary["bare_loop"]["tokens_per_s"]
                                if tps and "bare_loop" in summary else None}
        summary["memory"].append(memory_row("sft", sft))

    _log("grpo stage")
    grpo = run_stage("grpo", model_dir, work, size, "--use_vllm", "false", "--max_steps", str(size["grpo_steps"]),
                     "--per_device_train_batch_size", str(size["grpo_batch"]), "--num_generations", "4",
                     "--max_completion_length", str(size["grpo_completion"]), "--train_data", "arith:train:64",
                     "--eval_data", "none", "--reward_funcs", "pot_correctness", "pot_format", "brevity",
                     "--reward_weights", "1.0", "0.1", "1.0", "--reward_options", json.dumps({"brevity": {"coef": 2e-4}}))
    if "error" in grpo:
        summary["errors"]["grpo stage"] = grpo["error"]
    else:
        split = grpo["metrics"]["step_time_split"]
        lengths = [h["completions/mean_length"] for h in grpo["log_history"] if "completions/mean_length" in h]
        generated = sum(lengths) * size["grpo_batch"]
        summary["grpo"] = {"steps": size["grpo_steps"], "split": split, "generated_tokens": generated,
                           "rollout_tokens_per_s": generated / split["generation_s"] if split["generation_s"] else None}
        summary["memory"].append(memory_row("grpo", grpo))

    _log("prm stage")
    steps_file = work / "steps.jsonl"
    steps_file.write_text("".join(json.dumps(r) + "\n" for r in _stepwise_rows(64)))
    prm = run_stage("prm", model_dir, work, size, "--label_source", "import", "--import_files", str(steps_file),
                    "--bon_problems", "none", "--eval_fraction", "0.25", "--max_steps", str(size["prm_steps"]),
                    "--max_length", str(size["prm_length"]), "--reweight", "none")
    if "error" in prm:
        summary["errors"]["prm stage"] = prm["error"]
    else:
        summary["memory"].append(memory_row("prm", prm))
        _log("PRM scoring")
        try:
            summary["prm_scoring"] = prm_scoring(Path(prm["checkpoint"]), size["score_solutions"], device)
        except Exception as e:  # reported in the table
            summary["errors"]["prm scoring"] = f"{type(e).__name__}: {e}"

    summary["zero"] = zero_runs(model_dir, work, size, data, device)
    summary["wall_s"] = time.perf_counter() - t_start
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print()
    print(f"gpu_check on {summary['device']}, {summary['date']}, {summary['wall_s']:.0f} s")
    print(table(summary))
    print(f"written: {out}")
    if not opts.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if summary["errors"] else 0


def zero_runs(model_dir: Path, work: Path, size: dict, data: Path, device: str) -> dict:
    import importlib.util

    if device != "cuda":
        return {"ZeRO-2/3": "not run: CPU smoke (DeepSpeed needs CUDA)"}
    if importlib.util.find_spec("deepspeed") is None:
        return {"ZeRO-2/3": "not run: deepspeed is not installed (it builds CUDA ops; not in the carried wheelhouse)"}
    out = {}
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    for name in ("zero2", "zero3"):
        res = run_stage("sft", model_dir, work, size, "--train_data", str(data), "--max_length", str(size["seq"]),
                        "--per_device_train_batch_size", str(size["batch"]), "--max_steps", "3", "--eval_data", "none",
                        config=f"accelerate_configs/{name}.yaml",
                        launcher=[*accelerate, "--config_file", f"accelerate_configs/{name}.yaml", "--num_processes",
                                  "1"])
        if "error" in res:
            out[name] = res["error"][:80]
        else:
            peak = res["probe"].get("train_peak_bytes") or 0
            out[name] = f"{res['metrics'].get('train_tokens_per_s', 0):.0f} tokens/s, peak {peak / (1 << 30):.1f} GiB"
    return out


def _stepwise_rows(n: int) -> list[dict]:
    from stages.common.arith import generate_problems

    rows = []
    for i, p in enumerate(generate_problems(n, split="train", seed=3)):
        steps = p["program"].splitlines()
        k = 1 + i % (len(steps) - 1)
        rows.append({"prompt": p["question"], "completions": steps, "labels": [True] * k + [False] * (len(steps) - k)})
    return rows


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
