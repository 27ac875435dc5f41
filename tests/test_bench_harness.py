"""The benchmark protocol (bench/_harness.py) and the runner behind `make bench` (bench/run_all.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import _harness  # noqa: E402
import run_all  # noqa: E402
from _harness import ATMOST, Figure  # noqa: E402


def test_figure_ratio_and_targets():
    f = Figure("stage vs trl", 950.0, "tok/s", 1000.0, "trl", target=0.95)
    assert f.ratio == pytest.approx(0.95) and f.met is True
    assert Figure("x", 940.0, "tok/s", 1000.0, "trl", target=0.95).met is False
    # a ratio at most: PoT / CoT
    assert Figure("pot vs cot", 1.3, "s", 1.0, "cot", target=1.2, direction=ATMOST).met is False
    assert Figure("pot vs cot", 1.1, "s", 1.0, "cot", target=1.2, direction=ATMOST).met is True
    # an absolute target applies to the value, whatever the ratio
    f = Figure("checks", 15_000.0, "checks/s", 100.0, "math-verify", target=20_000, target_of="value")
    assert f.ratio == pytest.approx(150.0) and f.met is False
    # an explicit ratio wins over value / baseline
    assert Figure("speed-up", 2.0, "s", 1.0, "b", ratio=0.5, target=0.6, direction=ATMOST).met is True
    # no target: reported, never missed; a figure that could not be measured misses its target
    assert Figure("info", 3.0).met is None
    assert Figure("broken", float("nan"), target=1.0, target_of="value").met is False
    with pytest.raises(ValueError):
        Figure("bad", 1.0, direction=">")


def test_finish_prints_one_line_writes_json_and_fails_only_with_check(tmp_path, capsys):
    figures = [Figure("a vs b", 0.9, "tok/s", 1.0, "b", target=0.95), Figure("c", 5.0, "s")]
    args = _harness.parser("t").parse_args(["--json", str(tmp_path / "r.json")])
    assert _harness.finish(args, "demo", figures, {"k": 1}) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("RESULT demo:") and "0.9 (target >= 0.95: MISSED)" in line and "MISSED: a vs b" in line
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["status"] == "missed" and record["missed"] == ["a vs b"] and record["details"] == {"k": 1}
    assert record["figures"][0]["ratio"] == pytest.approx(0.9)
    args = _harness.parser("t").parse_args(["--check", "--quick"])
    assert _harness.finish(args, "demo", figures) == 1
    assert _harness.finish(args, "demo", [Figure("ok", 1.0, baseline=1.0, target=0.95)]) == 0
    assert "all targets met" in capsys.readouterr().out
    assert _harness.finish(args, "demo", [], skipped="no GPU") == 0
    assert capsys.readouterr().out.strip() == "RESULT demo: skipped (no GPU)"


FAKE = """
import sys
sys.path.insert(0, {bench!r})
from _harness import Figure, finish, parser
args = parser("fake").parse_args()
{body}
"""


def _fake_bench(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(FAKE.format(bench=str(BENCH), body=body))


def test_run_all_builds_one_table_and_exits_1_only_on_check_or_crash(tmp_path, monkeypatch, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    _fake_bench(bench, "a_met", "sys.exit(finish(args, 'a_met', [Figure('f', 2.0, 'x/s', 1.0, 'base', target=1.5)], "
                                "{'quick': args.quick}))")
    _fake_bench(bench, "b_missed", "sys.exit(finish(args, 'b_missed', [Figure('g', 1.0, 's', 2.0, 'base', "
                                   "target=0.9)]))")
    _fake_bench(bench, "c_skipped", "sys.exit(finish(args, 'c_skipped', [], skipped='no GPU'))")
    (bench / "_helper.py").write_text("raise SystemExit('a helper is not a benchmark')\n")
    for tool in run_all.TOOLS:  # tools (bench/memory_probe.py, bench/gpu_check.py) are not benchmarks either
        (bench / tool).write_text("raise SystemExit('a tool is not a benchmark')\n")
    monkeypatch.setattr(run_all, "BENCH", bench)
    out = tmp_path / "results.json"
    assert [p.name for p in run_all.discover()] == ["a_met.py", "b_missed.py", "c_skipped.py"]

    assert run_all.main(["--out", str(out)]) == 0  # a missed target alone: reported, exit 0
    results = json.loads(out.read_text())
    assert results["mode"] == "quick" and results["machine"]["cores"] >= 1 and "torch" in results["packages"]
    assert [r["benchmark"] for r in results["results"]] == ["a_met", "b_missed", "c_skipped"]
    assert results["results"][0]["details"] == {"quick": True}
    table = {row[0]: row for row in results["table"]}
    assert table["a_met"][1:] == ["f", "2 x/s", "1 (base)", "2", ">= 1.5", "met"]
    assert table["b_missed"][-1] == "MISSED" and table["c_skipped"][-1] == "SKIPPED"
    printed = capsys.readouterr().out
    assert "baseline (same run)" in printed and "missed targets: b_missed: g" in printed

    assert run_all.main(["--out", str(out), "--check", "--only", "a_met", "c_skipped"]) == 0
    assert run_all.main(["--out", str(out), "--check", "--full"]) == 1
    assert json.loads(out.read_text())["results"][0]["details"] == {"quick": False}

    _fake_bench(bench, "d_crash", "raise RuntimeError('boom')")
    assert run_all.main(["--out", str(out), "--only", "d_crash", "a_met", "--compare", str(out)]) == 1
    results = json.loads(out.read_text())
    crash = next(r for r in results["results"] if r["benchmark"] == "d_crash")
    assert crash["status"] == "error" and crash["exit_code"] == 1
    assert "old ratio" in capsys.readouterr().out


def test_every_benchmark_takes_the_common_flags():
    # the same rule as `make bench`: every bench/*.py but the `_` helpers, run_all.py and the named tools;
    # each named tool still exists (a renamed one would drop out of the set unnoticed and fail here below)
    scripts = run_all.discover()
    assert all((BENCH / tool).is_file() for tool in run_all.TOOLS), sorted(run_all.TOOLS)
    assert scripts and not {p.name for p in scripts} & run_all.TOOLS
    for script in scripts:
        out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (script.name, out.stderr[-2000:])
        for flag in ("--quick", "--check", "--json"):
            assert flag in out.stdout, (script.name, flag)


def test_evolve_generation_takes_the_recipes_workload_scaled_and_refuses_other_sources(tmp_path):
    import argparse

    import evolve_generation  # bench/evolve_generation.py

    def opts(recipe, **kw):
        return argparse.Namespace(recipe=str(recipe), problems=kw.get("problems", 96), samples=kw.get("samples"),
                                  max_new_tokens=None, batch_size=None)

    recipe = BENCH.parent / "recipes" / "tiny" / "evolve.yaml"  # 320 level-4 and 80 usual problems
    o = opts(recipe, samples=4)
    specs, (args, model_args), tree = evolve_generation._recipe_workload(o)
    assert specs == ["arith:train:77:11:levels=4", "arith:train:19:11"]
    assert (o.samples, o.max_new_tokens, o.batch_size) == (4, args.max_new_tokens, args.generation_batch_size)
    assert model_args.attn_implementation == "eager"  # the stage's loading, which the stage path must use
    assert tree is not None and tree.token_budget == args.tree_token_budget
    other = tmp_path / "evolve.yaml"
    other.write_text(f"base: {recipe}\ntrain_data: ['arith:train:50:levels=4', 'gsm8k:train:10']\n")
    with pytest.raises(SystemExit, match="gsm8k:train:10"):
        evolve_generation._recipe_workload(opts(other))
    other.write_text(f"base: {recipe}\ntrain_data: ['arith:train:30:levels=4', 'arith:test:10:3']\n")
    assert evolve_generation._recipe_workload(opts(other, problems=8))[0] == [
        "arith:train:6:11:levels=4", "arith:test:2:11"]
