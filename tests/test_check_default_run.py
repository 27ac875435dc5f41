"""scripts/check_default_run.py's promises on eval with repair (issue 16), on fake run folders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_default_run.py"


@pytest.fixture(scope="module")
def checker():
    spec = importlib.util.spec_from_file_location("check_default_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _repair(before, after, fixed=0, broken=0, right=100):
    return {"pass@1_before": before, "pass@1": after, "fixed": fixed, "broken": broken,
            "break_rate": broken / right, "best_of_same_budget": {"pass@1": before}}


def _run(tmp_path: Path, checker, repairs: dict[str, dict[str, dict]]) -> Path:
    for stage in checker.POLICY_STAGES:
        folder = tmp_path / stage / "latest" / "eval" / "k1"
        folder.mkdir(parents=True)
        sets = {name: {"pot": {"repair": m}} for name, m in repairs.get(stage, {}).items()}
        (folder / "results.json").write_text(json.dumps({"sets": sets}))
    return tmp_path


def test_a_run_that_keeps_the_promises_passes(tmp_path, checker):
    good = {checker.USUAL: _repair(0.97, 0.98, fixed=5), checker.HARD: _repair(0.5, 0.6, fixed=30)}
    run = _run(tmp_path, checker, {stage: good for stage in checker.POLICY_STAGES})
    assert checker.check_repair(run) == []


def test_each_broken_promise_is_named(tmp_path, checker):
    good = {checker.USUAL: _repair(0.97, 0.98), checker.HARD: _repair(0.9, 0.91)}
    repairs = {stage: good for stage in checker.POLICY_STAGES}
    repairs["grpo"] = {checker.USUAL: _repair(0.97, 0.96, broken=2), checker.HARD: _repair(0.5, 0.52)}
    del repairs["dpo"]
    problems = checker.check_repair(_run(tmp_path, checker, repairs))
    assert any(p.startswith("grpo: eval with repair broke 2 right answers on usual") for p in problems)
    assert any(p.startswith("grpo: usual pass@1 with repair 0.960 below plain 0.970") for p in problems)
    assert any(p.startswith("grpo: hard pass@1 with repair 0.520, under plain 0.500 + 5 points") for p in problems)
    assert any(p.startswith("dpo: no eval with repair on both splits") for p in problems)
    assert len(problems) == 4  # a stage right 90% of the time on the hard split owes no +5
