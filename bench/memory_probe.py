"""Measure a stage's peak training memory and compare it with plan-memory's estimate.

    python bench/memory_probe.py --out probe.json -- -m stages.sft --config RECIPE [--key value ...]

Runs the stage in this process (``runpy``, exactly as ``python -m stages.sft ...``) and writes to ``--out``:

- ``train_peak_bytes``: the peak of the training window (``Trainer.train``) above the baseline taken just
  before the first model is loaded (libraries imported, no weights yet). On CPU, memory is the process's
  resident set (``/proc/self/statm``; it includes the weights transformers leaves in the mmap'ed
  safetensors file; they are touched once after loading, so that a frozen embedding counts in full, as it
  does on a GPU), sampled every millisecond by a thread (torch releases the GIL inside its kernels),
  with glibc's mmap threshold pinned at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave
  the resident set at once instead of staying in malloc's heap, and oneDNN's primitive cache off
  (``ONEDNN_PRIMITIVE_CACHE_CAPACITY=0``: on CPU it keeps reordered bf16 weights per matmul shape). On CUDA:
  ``torch.cuda.max_memory_allocated`` over the window.
- ``timeline`` (with ``--timeline MIB``): the resident set each time it has moved by MIB since the last entry,
  with the main thread's innermost frames, and ``timeline_marks`` (when ``Trainer.train`` began and ended), to
  see which phase of a step (generation, loss, backward) holds what; times are seconds from the sampler's start.
- ``plan_bytes``: :func:`stages.common.memory.plan_for_recipe` for the same recipe and overrides, at the
  micro-batch and sequence length the run really had (the largest ``input_ids`` the model saw in training),
  without the CUDA overhead term on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# glibc: freed tensors leave the resident set at once; oneDNN: no cache of bf16 weights reordered for each new
# matmul shape (a CPU-only cost that grows with every new sequence length, e.g. each step of generation
# without a KV cache; a GPU has no such cache)
PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}


class RSSSampler(threading.Thread):
    """Peak resident memory of this process, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.001, timeline_step: int = 0):
        super().__init__(daemon=True)
        self.interval = interval
        self.timeline_step = timeline_step  # bytes; 0: no timeline
        self.timeline: list[dict] = []
        self.last = 0  # the resident set at the last timeline entry
        self.t0 = time.perf_counter()
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self.peak_stack: list[str] = []  # where the main thread was when the peak was sampled
        self.main = threading.main_thread().ident
        self.stop = threading.Event()

    def current(self) -> int:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        return int(fields[1]) * self.page

    def reset(self) -> int:
        self.peak = self.current()
        return self.peak

    def run(self) -> None:
        while not self.stop.is_set():
            value = self.current()
            if value > self.peak:
                self.peak = value
                frame = sys._current_frames().get(self.main)
                if frame is not None:
                    self.peak_stack = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}"
                                       for f in traceback.extract_stack(frame)[-12:]]
            if self.timeline_step and abs(value - self.last) >= self.timeline_step:
                self.last = value
                self.timeline.append({"t": round(self.now(), 3), "rss_bytes": value, "stack": self.frames()})
            time.sleep(self.interval)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def frames(self, depth: int = 8) -> list[str]:
        """The main thread's innermost frames, innermost last (no source lines read: cheap enough to sample)."""
        frame, out = sys._current_frames().get(self.main), []
        while frame is not None and len(out) < depth:
            code = frame.f_code
            if not code.co_filename.endswith("torch/nn/modules/module.py"):  # _call_impl wrappers
                out.append(f"{code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {code.co_name}")
            frame = frame.f_back
        return out[::-1]


def _stage_overrides(args: list[str]) -> tuple[str, str | None, list[str], str | None]:
    """(module, recipe, overrides without run bookkeeping, model path) from a stage command line."""
    module = args[args.index("-m") + 1]
    rest = args[args.index("-m") + 2:]
    recipe = rest[rest.index("--config") + 1] if "--config" in rest else None
    overrides, model, i = [], None, 0
    while i < len(rest):
        if rest[i] == "--config":
            i += 2
            continue
        if rest[i] in ("--run", "--runs_dir"):
            i += 2
            continue
        if rest[i] == "--model_name_or_path":
            model = rest[i + 1]
        overrides.append(rest[i])
        i += 1
    return module, recipe, overrides, model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeline", type=float, default=0, metavar="MIB",
                        help="also record the resident set each time it moves by MIB MiB (CPU), with where it was")
    parser.add_argument("stage", nargs=argparse.REMAINDER, help="-- -m stages.<x> --config ... (the stage command)")
    opts = parser.parse_args()
    stage_args = [a for a in opts.stage if a != "--"] if opts.stage[:1] == ["--"] else opts.stage
    if any(os.environ.get(k) != v for k, v in PROBE_ENV.items()):
        # glibc and oneDNN read them at start-up: start again with them set
        os.environ.update(PROBE_ENV)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    sys.path.insert(0, str(REPO))
    module, recipe, overrides, model = _stage_overrides(stage_args)

    import torch
    import transformers

    cuda = torch.cuda.is_available()
    sampler = RSSSampler(timeline_step=0 if cuda else int(opts.timeline * 2**20))
    sampler.start()
    record: dict = {"module": module, "recipe": recipe, "device": "cuda" if cuda else "cpu",
                    "method": "cuda max_memory_allocated" if cuda else "resident set sampled every 1 ms"}
    shapes: list[tuple[int, int]] = []
    original_load = transformers.PreTrainedModel.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        if "baseline_bytes" not in record:
            record["baseline_bytes"] = torch.cuda.memory_allocated() if cuda else sampler.current()
        model = original_load(cls, *args, **kwargs)
        if not cuda:  # fault in the mmap'ed weights: a frozen embedding is otherwise read only where used
            with torch.no_grad():
                for param in model.parameters():
                    param.reshape(-1)[:: max(1, 4096 // param.element_size())].sum()
        return model

    transformers.PreTrainedModel.from_pretrained = classmethod(from_pretrained)
    original_train = transformers.Trainer.train

    def train(self, *args, **kwargs):
        def seen(_module, call_args, call_kwargs):
            ids = call_kwargs.get("input_ids") if call_kwargs.get("input_ids") is not None else (
                call_args[0] if call_args else None)
            if ids is not None and torch.is_grad_enabled() and ids.dim() == 2:
                shapes.append(tuple(ids.shape))

        handle = self.model.register_forward_pre_hook(seen, with_kwargs=True)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        record["train_start_bytes"] = torch.cuda.memory_allocated() if cuda else sampler.reset()
        marks = record.setdefault("timeline_marks", {})
        marks["train_start"] = round(sampler.now(), 3)
        t0 = time.perf_counter()
        try:
            return original_train(self, *args, **kwargs)
        finally:
            record["train_wall_s"] = time.perf_counter() - t0
            marks["train_end"] = round(sampler.now(), 3)
            record["train_window_peak_bytes"] = torch.cuda.max_memory_allocated() if cuda else sampler.peak
            if not cuda:
                record["peak_stack"] = sampler.peak_stack
            handle.remove()

    transformers.Trainer.train = train
    sys.argv = [module, *stage_args[stage_args.index("-m") + 2:]]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = int(e.code or 0)
    sampler.stop.set()
    sampler.join()
    if "train_window_peak_bytes" in record:
        record["train_peak_bytes"] = record["train_window_peak_bytes"] - record.get("baseline_bytes", 0)
        batch = max(s[0] for s in shapes) if shapes else None
        seq = max(s[1] for s in shapes) if shapes else None
        record["observed_batch"], record["observed_seq_len"] = batch, seq
        if recipe is not None:
            from stages.common.memory import plan_for_recipe

            plan = plan_for_recipe(recipe, overrides, model_config=model, device=record["device"],
                                   stage=module.rsplit(".", 1)[-1], micro_batch=batch, seq_len=seq)
            record["plan_bytes"] = plan.total
            record["plan"] = plan.to_json()
    if sampler.timeline_step:
        record["timeline"] = sampler.timeline
    Path(opts.out).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
