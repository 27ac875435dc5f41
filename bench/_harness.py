"""What every benchmark in ``bench/`` shares: the same flags and the same result line and file.

The protocol (``bench/README.md``): a benchmark is a script ``bench/<name>.py`` that

- builds its parser with :func:`parser` (``--quick``, ``--check``, ``--json PATH``, plus its own
  flags), measures its figures and their baselines in the same run, and
- ends with ``return finish(args, "<name>", figures, details)``: one ``RESULT`` line on stdout
  (every ratio, its target, met / MISSED), the figures written to ``--json`` when given, and the
  exit status (1 only with ``--check`` and a missed target).

``bench/run_all.py`` (``make bench``) runs every such script with ``--json`` and builds one table
from those files. A benchmark that cannot run here (no GPU, no data) reports ``skipped`` with the
reason instead of figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a benchmark runs as `python bench/<name>.py`: make the project importable
    sys.path.insert(0, str(REPO))

FORMAT_VERSION = 1
ATLEAST, ATMOST = ">=", "<="


@dataclass
class Figure:
    """One measured figure of a benchmark.

    ``value`` is the thing measured (``unit``); ``baseline`` is what it is compared with, measured
    in the same run (``baseline_name`` says what it is). ``ratio`` is ``value / baseline`` unless
    given (some benchmarks compare differently, e.g. speed-up = baseline time / our time). The
    target applies to ``ratio`` (``target_of="ratio"``) or to ``value`` itself (an absolute target,
    such as checks per second or a wall time), in direction ``>=`` or ``<=``. A figure with no
    target is reported but never missed.
    """

    name: str
    value: float
    unit: str = ""
    baseline: float | None = None
    baseline_name: str | None = None
    ratio: float | None = None
    target: float | None = None
    direction: str = ATLEAST
    target_of: str = "ratio"
    note: str | None = None
    met: bool | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.direction not in (ATLEAST, ATMOST):
            raise ValueError(f"direction must be '>=' or '<=', got {self.direction!r}")
        if self.target_of not in ("ratio", "value"):
            raise ValueError(f"target_of must be 'ratio' or 'value', got {self.target_of!r}")
        if self.ratio is None and self.baseline:
            self.ratio = self.value / self.baseline
        if self.target is not None:
            judged = self.ratio if self.target_of == "ratio" else self.value
            if judged is None or not math.isfinite(judged):
                self.met = False
            else:
                self.met = judged >= self.target if self.direction == ATLEAST else judged <= self.target

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f"{'ratio' if self.target_of == 'ratio' else 'value'} {self.direction} {fmt(self.target)}"

    def summary(self) -> str:
        """``name ratio X (target >= Y: met)`` for the result line."""
        shown = self.ratio if self.target_of == "ratio" and self.ratio is not None else self.value
        unit = "" if self.target_of == "ratio" and self.ratio is not None else f" {self.unit}".rstrip()
        verdict = "no target" if self.met is None else ("met" if self.met else "MISSED")
        target = "" if self.target is None else f"target {self.direction} {fmt(self.target)}: "
        return f"{self.name} {fmt(shown)}{unit} ({target}{verdict})"


def fmt(x: float | None) -> str:
    """A figure with three significant digits, thousands grouped (``563,000``, ``0.953``)."""
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def parser(description: str | None, **kwargs) -> argparse.ArgumentParser:
    """The benchmark's parser, with the three flags every benchmark takes."""
    ap = argparse.ArgumentParser(description=description, **kwargs)
    ap.add_argument("--quick", action="store_true", help="a short run (what `make bench` runs by default)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH",
                    help="also write the figures (and details) to this JSON file")
    return ap


def result(name: str, figures: list[Figure], *, quick: bool, details: dict | None = None,
           skipped: str | None = None) -> dict:
    """The JSON record of one benchmark run (what ``--json`` writes and ``run_all`` reads)."""
    missed = [f.name for f in figures if f.met is False]
    status = "skipped" if skipped else ("missed" if missed else "met")
    return {"format": FORMAT_VERSION, "benchmark": name, "quick": quick, "status": status, "skipped": skipped,
            "missed": missed, "figures": [asdict(f) for f in figures], "load_average": os.getloadavg(),
            "details": details or {}}


def result_line(record: dict) -> str:
    """The one line a benchmark ends with."""
    if record["skipped"]:
        return f"RESULT {record['benchmark']}: skipped ({record['skipped']})"
    parts = [Figure(**{k: v for k, v in f.items() if k != "met"}).summary() for f in record["figures"]]
    verdict = "all targets met" if not record["missed"] else f"MISSED: {', '.join(record['missed'])}"
    return f"RESULT {record['benchmark']}: {'; '.join(parts)} -> {verdict}"


def finish(args: argparse.Namespace, name: str, figures: list[Figure], details: dict | None = None, *,
           skipped: str | None = None) -> int:
    """Print the result line, write ``--json``, and return the exit status."""
    record = result(name, figures, quick=bool(getattr(args, "quick", False)), details=details, skipped=skipped)
    if args.json:
        write_json(Path(args.json), record)
    print(result_line(record), flush=True)
    return 1 if args.check and record["missed"] else 0


def write_json(path: Path, obj: dict) -> None:
    """Atomic write (a half-written results file would be read as a broken run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)
