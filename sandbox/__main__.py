"""Command line of the sandbox.

    python -m sandbox run IN.jsonl -o OUT.jsonl [--timeout S] [--memory-mb M] [--workers N]
    python -m sandbox report          # which isolation mechanisms are active here (JSON)

``run`` reads ``{"id", "code"}`` lines (``-`` for stdin) and writes ``{"id", "status", "answer",
"stdout", "stderr", "elapsed_s", "error_type"}`` lines in input order (``-`` for stdout), with a
progress bar when stderr is a terminal. Every input line is checked before anything runs; a bad
one is an error naming the file, the line and the field.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from tqdm.auto import tqdm

from sandbox.config import SandboxConfig
from sandbox.pool import Sandbox

_CHUNK = 1024  # programs per run_many call: bounded memory, output written as it comes


class InputError(ValueError):
    pass


def read_programs(stream: IO[str], name: str) -> list[tuple[Any, str]]:
    """(id, code) pairs of a JSONL stream; raises InputError naming ``name:line`` and the field."""
    programs = []
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{name}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise InputError(f"{name}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for field in ("id", "code"):
            if field not in row:
                raise InputError(f"{name}:{lineno}: missing field {field!r}")
        if not isinstance(row["code"], str):
            raise InputError(f"{name}:{lineno}: field 'code' must be a string, got {type(row['code']).__name__}")
        programs.append((row["id"], row["code"]))
    return programs


@contextmanager
def _open(path: str, mode: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdin if "r" in mode else sys.stdout
    else:
        with open(path, mode, encoding="utf-8") as f:
            yield f


def cmd_run(args: argparse.Namespace) -> int:
    with _open(args.input, "r") as f:
        programs = read_programs(f, "<stdin>" if args.input == "-" else args.input)
    overrides: dict[str, Any] = {}
    if args.timeout is not None:
        overrides["timeout_s"] = args.timeout
    if args.memory_mb is not None:
        overrides["memory_mb"] = args.memory_mb
    if args.workers is not None:
        overrides["workers"] = args.workers
    config = SandboxConfig().replace(**overrides)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = None
    if show:
        bar = tqdm(total=len(programs), desc="sandbox", unit="prog", file=sys.stderr)
    with Sandbox(config) as sb, _open(args.output, "w") as out:
        for start in range(0, len(programs), _CHUNK):
            chunk = programs[start:start + _CHUNK]
            for (pid, _code), r in zip(chunk, sb.run_many([c for _, c in chunk]), strict=True):
                row = {"id": pid, "status": r.status, "answer": r.answer, "stdout": r.stdout,
                       "stderr": r.stderr, "elapsed_s": round(r.elapsed_s, 6), "error_type": r.error_type}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    with Sandbox(SandboxConfig(workers=1)) as sb:
        print(json.dumps(sb.isolation_report(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the programs of a JSONL file")
    run.add_argument("input", help="JSONL with {id, code} per line; - for stdin")
    run.add_argument("-o", "--output", default="-", help="JSONL results; - for stdout (default)")
    run.add_argument("--timeout", type=float, help="wall-clock seconds per program (default 5)")
    run.add_argument("--memory-mb", type=int, help="memory per program beyond the interpreter (default 1024)")
    run.add_argument("--workers", type=int, help="parallel workers (default: the CPUs available)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default: when stderr is a terminal)")
    run.set_defaults(func=cmd_run)
    report = sub.add_parser("report", help="print which isolation mechanisms are active")
    report.set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (InputError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
