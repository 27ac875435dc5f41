"""Run every benchmark in ``bench/``, one at a time, and print one table of their figures.

    .venv/bin/python bench/run_all.py [--full] [--check] [--only NAME ...] [--out bench/results.json]
        [--compare OLD.json] [--timeout S]

``make bench`` runs this (``BENCH_FULL=1`` adds ``--full``, ``BENCH_CHECK=1`` adds ``--check``).
A benchmark is every ``bench/*.py`` except this file, the ``_``-prefixed helpers and the tools named
in ``TOOLS`` (memory_probe.py, gpu_check.py); each runs as a fresh process, ``--quick`` unless
``--full``, with ``--json`` (the protocol: ``bench/README.md``).
The table has one row per figure: benchmark, figure, its value, the baseline measured in the same
run, the ratio, the target and whether it was met. It is written to ``--out`` with the machine's
core count, the package versions, the git commit and the date, so that two runs can be compared
(``--compare`` adds the old run's ratio column).

Exit status: 1 when a benchmark failed to run (crash, no result file); 1 with ``--check`` when a
target was missed; else 0 (a missed target alone is reported, not fatal, without ``--check``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _harness import REPO, fmt, write_json  # noqa: E402

from stages.common.checkpoint import git_commit, now_iso, package_versions  # noqa: E402

# Scripts in bench/ that are tools, not benchmarks: they measure no figure against a baseline and do not
# take the protocol's flags. memory_probe.py wraps one stage run to measure its training peak (called by
# gpu_check.py and tests/reference_shape.py with the stage's command line); gpu_check.py is the one-shot
# check on a GPU machine (bench/gpu_check.sh runs it; docs/scaling.md), minutes on an H100 and a toy
# --cpu-smoke for the test suite.
TOOLS = frozenset({"memory_probe.py", "gpu_check.py"})


def is_benchmark(path: Path) -> bool:
    """A ``bench/*.py`` that follows the protocol: not a ``_`` helper, not this runner, not a tool."""
    return not path.name.startswith("_") and path.name != Path(__file__).name and path.name not in TOOLS


def discover() -> list[Path]:
    """The benchmark scripts, in name order."""
    return sorted(p for p in BENCH.glob("*.py") if is_benchmark(p))


def run_one(script: Path, *, full: bool, timeout: float | None, extra: list[str]) -> dict:
    """Run one benchmark as a fresh process (its output streams through) and read its result file."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(script), "--json", str(out), *([] if full else ["--quick"]), *extra]
        shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
        print(f"\n== {shown} {' '.join(cmd[2:])}", flush=True)
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout)
            rc, error = proc.returncode, None
        except subprocess.TimeoutExpired:
            rc, error = None, f"timed out after {timeout:.0f} s"
        wall = time.perf_counter() - t0
        record = json.loads(out.read_text()) if out.is_file() else None
    name = script.stem
    if record is None:
        error = error or f"exited {rc} without writing its result"
        return {"benchmark": name, "status": "error", "error": error, "exit_code": rc, "wall_s": wall,
                "figures": []}
    # the script's own exit status is ignored when it wrote its result (run_all decides on --check)
    return {**record, "exit_code": rc, "wall_s": wall}


def table_rows(results: list[dict], previous: dict[tuple[str, str], float | None] | None) -> list[list[str]]:
    """One row per figure (one per benchmark that was skipped or failed); with ``previous``, the old
    run's ratio of the same figure comes after this run's."""
    rows = []
    for r in results:
        if r["status"] in ("error", "skipped"):
            reason = r.get("error") or r.get("skipped") or ""
            rows.append([r["benchmark"], f"({r['status']}: {reason})", "", "", "", "", r["status"].upper()])
            if previous is not None:
                rows[-1].insert(5, "")
            continue
        for f in r["figures"]:
            met = "-" if f["met"] is None else ("met" if f["met"] else "MISSED")
            value = f"{fmt(f['value'])} {f['unit']}".strip()
            base = f"{fmt(f['baseline'])} ({f['baseline_name']})" if f["baseline"] is not None else "-"
            target = "-" if f["target"] is None else (
                f"{f['direction']} {fmt(f['target'])}" + (" (value)" if f["target_of"] == "value" else ""))
            row = [r["benchmark"], f["name"], value, base, fmt(f["ratio"]), target, met]
            if previous is not None:
                row.insert(5, fmt(previous.get((r["benchmark"], f["name"]))))
            rows.append(row)
    return rows


def print_table(rows: list[list[str]], compare: bool) -> None:
    head = ["benchmark", "figure", "value", "baseline (same run)", "ratio", "target", "met"]
    if compare:
        head.insert(5, "old ratio")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    print("\n" + line + "\n" + "-" * len(line))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))


def machine() -> dict:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cores": cpus, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "load_average_before": os.getloadavg()}
    try:
        import torch  # deferred: heavy, and only for the device line

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["cuda"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="full runs (default: each benchmark's --quick)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these benchmarks (names "
                                                                            "without .py)")
    ap.add_argument("--out", type=Path, default=BENCH / "results.json", help="where the table goes (JSON)")
    ap.add_argument("--compare", type=Path, default=None, help="an older results file: adds its ratios")
    ap.add_argument("--timeout", type=float, default=None, help="seconds allowed per benchmark (default: none)")
    args = ap.parse_args(argv)

    scripts = discover()
    if args.only:
        unknown = sorted(set(args.only) - {s.stem for s in scripts})
        if unknown:
            ap.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(s.stem for s in scripts)}")
        scripts = [s for s in scripts if s.stem in args.only]
    previous = None
    if args.compare:
        old = json.loads(args.compare.read_text())
        previous = {(r["benchmark"], f["name"]): f.get("ratio") for r in old["results"] for f in r.get("figures", [])}

    started, t0 = now_iso(), time.perf_counter()
    info = machine()
    results = [run_one(s, full=args.full, timeout=args.timeout, extra=[]) for s in scripts]
    rows = table_rows(results, previous)
    print_table(rows, previous is not None)
    errors = [r["benchmark"] for r in results if r["status"] == "error"]
    missed = [f"{r['benchmark']}: {name}" for r in results for name in r.get("missed", [])]
    write_json(args.out, {"format": 1, "mode": "full" if args.full else "quick", "started_at": started,
                          "finished_at": now_iso(), "wall_s": time.perf_counter() - t0, "machine": info,
                          "packages": package_versions(), "git_commit": git_commit(),
                          "columns": ["benchmark", "figure", "value", "baseline", "ratio",
                                      *(["old ratio"] if previous is not None else []), "target", "met"],
                          "table": rows, "results": results})
    print(f"\n{len(results)} benchmarks ({'full' if args.full else 'quick'}) in {time.perf_counter() - t0:.0f} s "
          f"on {info['cores']} cores; written to {args.out}")
    busy = [f"{r['benchmark']} ({r['load_average'][0]:.1f})" for r in results
            if r.get("load_average") and r["load_average"][0] > info["cores"] + 1]
    if busy:
        print(f"note: other jobs shared the {info['cores']} cores (1-minute load average at the end of "
              f"{', '.join(busy)}): the baselines saw the same machine, but ratios of short wall times are noisier")
    if errors:
        print(f"failed to run: {', '.join(errors)}")
    if missed:
        print(f"missed targets: {'; '.join(missed)}" + ("" if args.check else " (exit 0: pass --check to fail)"))
    return 1 if errors or (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
