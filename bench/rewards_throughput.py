"""Throughput of answer checking and of the PoT correctness reward, against baselines of the same run.

    .venv/bin/python bench/rewards_throughput.py [--quick] [--numeric 100000] [--symbolic 60] [--batch 256] [--reps 5]
        [--check] [--json PATH]

1. Numeric path: ``is_equivalent`` on GSM8K gold answers against predictions dressed as models
   and programs write them (``18``, ``18.0``, ``$1,080``, ``18 dollars``, wrong values), pinned to
   one core. Baseline: math-verify (parse + verify, in-process) on the same pairs.
   Target: >= 20,000 checks/s.
   Also (reported, no target) the same on the gold-forms corpus of ``tests/data/gold_forms.jsonl``
   (units, currency, percents, fractions, ratios, times, names, options: every gold that is not an
   expression, each against its printed outputs).
2. Symbolic path (reported, no target): LaTeX/expression pairs through ``is_equivalent`` (the
   worker process with its hard time limit, cache off) against math-verify called in-process
   on the same pairs, which has no hard limit and no limit at all outside the main thread; the
   ratio is the price of the worker. Also the worker's start-up time.
3. PoT correctness reward over a batch of ``--batch`` completions (programs built from the
   calculator annotations of GSM8K test solutions): the ``pot_correctness`` TRL reward against
   ``sandbox.run_many`` of the same programs alone. Target: reward / sandbox < 2.

``--quick``: 20,000 numeric pairs, 20 symbolic checks, 3 repetitions of the PoT batch.
``--check`` exits 1 when a target is missed.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Figure, finish, parser  # noqa: E402

from rewards import is_equivalent  # noqa: E402
from rewards.registry import get_reward_funcs  # noqa: E402
from rewards.symbolic import SymbolicChecker  # noqa: E402
from stages.common.data import gsm8k_dir  # noqa: E402
from stages.common.pot import format_completion  # noqa: E402

NUMERIC_TARGET = 20_000
GOLD_FORMS = Path(__file__).resolve().parents[1] / "tests" / "data" / "gold_forms.jsonl"
REWARD_RATIO_TARGET = 2.0
_ANNOTATION_RE = re.compile(r"<<([^=<>]+)=[^<>]*>>")

SYMBOLIC_PAIRS = [
    ("\\frac{6}{4}+x-x", "3/2"),
    ("(x+1)^2", "x^2+2x+1"),
    ("(a+b)^2", "a^2+b^2"),
    ("\\sqrt{2}/2", "1/\\sqrt{2}"),
    ("2\\pi r", "2r\\pi"),
    ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}"),
    ("x^2-1", "(x-1)(x+1)"),
    ("\\frac{1}{1+\\sqrt{2}}", "\\sqrt{2}-1"),
    ("3\\sqrt{3}", "\\sqrt{27}"),
    ("e^{i\\pi}", "-1"),
]


def _gsm8k_rows(d: Path) -> list[dict]:
    return [json.loads(line) for line in (d / "test.jsonl").read_text(encoding="utf-8").splitlines() if line]


def _rate(fn: Callable[[], int], min_s: float = 1.0) -> float:
    """Calls per second of ``fn`` (which returns how many checks it made), run for >= min_s."""
    n, start = 0, time.perf_counter()
    while True:
        n += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return n / elapsed


def numeric_pairs(rows: list[dict], n: int) -> list[tuple[str, str]]:
    golds = [r["answer"].split("####")[-1].strip() for r in rows]
    pairs = []
    for i, gold in enumerate(golds):
        v = Fraction(gold.replace(",", ""))
        num = int(v) if v.denominator == 1 else float(v)
        pairs += [(gold, gold), (f"{float(v)}", gold), (f"${num:,}", gold), (f"{num} dollars", gold),
                  (str(num + 1), gold), (golds[(i + 7) % len(golds)], gold)]
    return (pairs * (n // len(pairs) + 1))[:n]


def forms_pairs(n: int) -> list[tuple[str, str]]:
    """(printed answer, gold) pairs of the gold-forms corpus, without its expression golds."""
    pairs = []
    for line in GOLD_FORMS.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["kind"] in ("number", "ratio", "time", "text"):
            pairs += [(out, row["gold"]) for out in row["right"] + row["wrong"]]
    return (pairs * (n // len(pairs) + 1))[:n]


def bench_forms(n: int) -> dict:
    pairs = forms_pairs(n)

    def ours() -> int:
        for p, g in pairs:
            is_equivalent(p, g)
        return len(pairs)

    return {"checks_per_s": _rate(ours), "pairs": len({*pairs})}


def bench_numeric(rows: list[dict], n: int) -> dict:
    pairs = numeric_pairs(rows, n)
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if affinity:
        os.sched_setaffinity(0, {min(affinity)})  # one core
    try:
        def ours() -> int:
            for p, g in pairs:
                is_equivalent(p, g)
            return len(pairs)

        rate = _rate(ours)
        forms = bench_forms(n)
        from math_verify import parse, verify  # deferred: heavy, and timed after our path

        sample = pairs[:300]

        def baseline() -> int:
            for p, g in sample:
                verify(parse(g), parse(p))
            return len(sample)

        base = _rate(baseline)
    finally:
        if affinity:
            os.sched_setaffinity(0, affinity)
    return {"checks_per_s": rate, "math_verify_checks_per_s": base, "speedup": rate / base,
            "target": NUMERIC_TARGET, "met": rate >= NUMERIC_TARGET, "gold_forms": forms}


def bench_symbolic(n: int) -> dict:
    start = time.perf_counter()
    checker = SymbolicChecker(cache_size=0)
    checker.equivalent("1", "1")
    startup = time.perf_counter() - start
    pairs = (SYMBOLIC_PAIRS * (n // len(SYMBOLIC_PAIRS) + 1))[:n]
    t0 = time.perf_counter()
    ours = [checker.equivalent(p, g) for p, g in pairs]
    worker_s = (time.perf_counter() - t0) / n
    checker.close()

    from math_verify import parse, verify  # deferred: heavy

    verify(parse("$\\frac{(x+1)^2}{2}$"), parse("$x^2/2+x+1/2$"))  # the same warm-up the worker does
    t0 = time.perf_counter()
    theirs = [bool(verify(parse(f"${g}$"), parse(f"${p}$"))) for p, g in pairs]
    inproc_s = (time.perf_counter() - t0) / n
    return {"worker_ms_per_check": worker_s * 1e3, "in_process_ms_per_check": inproc_s * 1e3,
            "overhead_ratio": worker_s / inproc_s, "worker_startup_s": startup,
            "same_verdicts": ours == theirs}


def pot_batch(rows: list[dict], size: int) -> tuple[list[str], list[str]]:
    completions, golds = [], []
    for r in rows:
        exprs = _ANNOTATION_RE.findall(r["answer"])
        if not exprs:
            continue
        code = "\n".join(f"step{i} = {e}" for i, e in enumerate(exprs)) + f"\nprint(step{len(exprs) - 1})"
        completions.append(format_completion(code))
        golds.append(r["answer"].split("####")[-1].strip())
        if len(completions) == size:
            break
    return completions, golds


def bench_pot_reward(rows: list[dict], size: int, reps: int) -> dict:
    from sandbox import get_sandbox  # deferred: an ImportError here skips this part
    from stages.common.pot import extract_program

    completions, golds = pot_batch(rows, size)
    programs = [extract_program(c) for c in completions]
    sandbox = get_sandbox()
    sandbox.run_many(programs[:8])  # warm up (template process, pools)
    sandbox_s, reward_s = [], []
    rewards: list = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sandbox.run_many(programs)
        sandbox_s.append(time.perf_counter() - t0)
        (reward,) = get_reward_funcs(["pot_correctness"], sandbox=sandbox)  # a fresh memo: no reuse
        t0 = time.perf_counter()
        rewards = reward(["q"] * len(completions), completions, answer=golds)
        reward_s.append(time.perf_counter() - t0)
    s, r = statistics.median(sandbox_s), statistics.median(reward_s)
    return {"batch": len(completions), "sandbox_s": s, "reward_s": r, "ratio": r / s,
            "target": REWARD_RATIO_TARGET, "met": r / s < REWARD_RATIO_TARGET,
            "correct_share": sum(x == 1.0 for x in rewards) / len(rewards)}


def main() -> int:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--numeric", type=int, default=100_000, help="numeric pairs per timing pass")
    ap.add_argument("--symbolic", type=int, default=60, help="symbolic checks")
    ap.add_argument("--batch", type=int, default=256, help="PoT completions in the reward batch")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the PoT batch (median)")
    args = ap.parse_args()
    if args.quick:
        args.numeric, args.symbolic, args.reps = min(args.numeric, 20_000), min(args.symbolic, 20), min(args.reps, 3)
    data = gsm8k_dir()
    if data is None:
        return finish(args, "rewards_throughput", [], skipped="GSM8K not found (../shared/data/gsm8k or "
                                                                "$MATHFORGE_GSM8K_DIR)")
    rows = _gsm8k_rows(data)

    num = bench_numeric(rows, args.numeric)
    print(f"numeric  : {num['checks_per_s']:,.0f} checks/s on one core (target >= {NUMERIC_TARGET:,}: "
          f"{'met' if num['met'] else 'MISSED'}); math-verify in-process {num['math_verify_checks_per_s']:,.0f}/s, "
          f"x{num['speedup']:.0f}")
    print(f"forms    : {num['gold_forms']['checks_per_s']:,.0f} checks/s on one core over the "
          f"{num['gold_forms']['pairs']} non-expression pairs of {GOLD_FORMS.name}")
    sym = bench_symbolic(args.symbolic)
    print(f"symbolic : {sym['worker_ms_per_check']:.2f} ms/check in the worker vs "
          f"{sym['in_process_ms_per_check']:.2f} ms in-process math-verify (x{sym['overhead_ratio']:.2f}); "
          f"worker start {sym['worker_startup_s']:.2f} s; same verdicts: {sym['same_verdicts']}")
    figures = [
        Figure("numeric checks", num["checks_per_s"], "checks/s", num["math_verify_checks_per_s"],
               "math-verify in-process", target=NUMERIC_TARGET, target_of="value"),
        Figure("symbolic check in the worker", sym["worker_ms_per_check"], "ms/check",
               sym["in_process_ms_per_check"], "math-verify in-process"),
    ]
    details = {"numeric": num, "symbolic": sym}
    try:
        pot = bench_pot_reward(rows, args.batch, args.reps)
    except ImportError as e:
        print(f"pot      : skipped, the sandbox is not importable ({e})")
        figures.append(Figure("pot_correctness reward batch", float("nan"), "s", note=f"sandbox not importable: {e}",
                              target=REWARD_RATIO_TARGET, direction="<="))
    else:
        print(f"pot      : reward over {pot['batch']} completions {pot['reward_s'] * 1e3:.0f} ms vs sandbox batch "
              f"alone {pot['sandbox_s'] * 1e3:.0f} ms: x{pot['ratio']:.2f} (target < {REWARD_RATIO_TARGET}: "
              f"{'met' if pot['met'] else 'MISSED'}); correct share {pot['correct_share']:.2f}")
        details["pot"] = pot
        figures.append(Figure("pot_correctness reward batch", pot["reward_s"], "s", pot["sandbox_s"],
                              "sandbox.run_many alone", target=REWARD_RATIO_TARGET, direction="<="))
    return finish(args, "rewards_throughput", figures, details)


if __name__ == "__main__":
    sys.exit(main())
