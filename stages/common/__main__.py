"""``python -m stages.common lineage runs/<run> [--json]``: print a run's checkpoints and chains.

``python -m stages.common lineage runs/<run>/<stage>[/vN]`` prints the chain from that checkpoint
back to its root (the base model).

``python -m stages.common plan-memory --config <recipe> [--gpu-memory 40GiB] [--model_config DIR]``
prints a stage's expected peak GPU memory and the largest micro-batch that fits
(:mod:`stages.common.memory`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stages.common import memory
from stages.common.checkpoint import MANIFEST, lineage, run_checkpoints


def _line(m: dict) -> str:
    if m.get("stage") is None:
        return f"{m.get('kind', 'external')}: {m['path']}"
    metrics = m.get("metrics") or {}
    evals = metrics.get("eval") if isinstance(metrics.get("eval"), dict) else {}
    # policy stages report {eval set: metrics}; print pass@1 on each set
    extra = "".join(f"  pass@1[{source}]={v['pass@1']:.3f}" for source, v in evals.items()
                    if isinstance(v, dict) and isinstance(v.get("pass@1"), float))
    return (f"{m['stage']}/v{m['version']}  {m['path']}  config={m.get('config_sha256', '')[:12]}  "
            f"finished={m.get('finished_at', '?')}{extra}")


def cmd_lineage(path: str, as_json: bool) -> int:
    p = Path(path)
    if not p.exists():
        print(f"lineage: '{path}' does not exist", file=sys.stderr)
        return 2
    is_run = not (p / MANIFEST).exists() and not (p / "latest").exists()
    if is_run:
        ckpts = run_checkpoints(p)
        if not ckpts:
            print(f"lineage: no complete checkpoint under '{path}'", file=sys.stderr)
            return 1
        parents = {(m.get("parent") or {}).get("path") for m in ckpts}
        leaves = [m for m in ckpts if m["path"] not in parents and str(Path(m["path"]).resolve()) not in parents]
        newest = (leaves or ckpts)[-1]["path"]
        chain = lineage(newest)
        if as_json:
            print(json.dumps({"checkpoints": ckpts, "chain": chain}, indent=2, default=str))
            return 0
        print(f"checkpoints in {path} (oldest first):")
        for m in ckpts:
            print("  " + _line(m))
    else:
        chain = lineage(p)
        if as_json:
            print(json.dumps({"chain": chain}, indent=2, default=str))
            return 0
    print("chain (newest first):")
    for i, m in enumerate(chain):
        print("  " + ("<- " if i else "   ") + _line(m))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plan-memory"]:
        return memory.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m stages.common")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("lineage", help="print the checkpoints of a run and the chain of the newest one")
    p.add_argument("path", help="runs/<run>, a stage folder or a checkpoint folder")
    p.add_argument("--json", action="store_true")
    sub.add_parser("plan-memory", help="expected peak GPU memory of a stage (--config RECIPE [--gpu-memory 40GiB])",
                   add_help=False)
    args = parser.parse_args(argv)
    return cmd_lineage(args.path, args.json)


if __name__ == "__main__":
    sys.exit(main())
