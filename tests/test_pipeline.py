"""The README's pipeline command end to end: every stage runs through `accelerate launch` (on
recipes/smoke, the default shrunk), a rerun skips, and a failing stage stops the pipeline with its
name. The default recipe's own figures are checked by .ci/run (scripts/check_default_run.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _pipeline(runs: Path, **env):
    full_env = {**os.environ, "RUNS_DIR": str(runs), "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run(["./run_pipeline.sh"], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=1800)


POLICY_STAGES = ("sft", "grpo", "evolve", "revise", "dpo", "length_rl")


@pytest.mark.slow
def test_pipeline_runs_every_stage_chains_skips_and_reports(tmp_path):
    """The README's pipeline command on recipes/smoke (the default recipe, shrunk: every stage runs in
    seconds): all stages complete through `accelerate launch`, each policy is evaluated on both eval
    sets, a rerun skips, the report is written. The default's figures are checked by .ci/run's full
    run (scripts/check_default_run.py), not here: they take the suite's whole time budget."""
    out = _pipeline(tmp_path, RECIPE="recipes/smoke")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    run = tmp_path / "smoke"
    for stage in ("synth", "prm", *POLICY_STAGES):
        manifest = json.loads((run / stage / "latest" / "manifest.json").read_text())
        assert manifest["status"] == "complete", stage
    for stage in POLICY_STAGES:
        evals = json.loads((run / stage / "latest" / "metrics.json").read_text())["eval"]
        usual, hard = evals["arith:test:40"], evals["arith:test:30:0:levels=4"]  # each split on its own
        assert usual["n"] == 40 and hard["n"] == 30, stage
        assert 0 <= usual["pass@1"] <= 1 and usual["mean_completion_tokens"] > 0, stage
        assert list((run / stage / "latest" / "eval").iterdir()), stage  # eval.gsm8k's results beside it
    # each stage starts from the newest policy before it (@latest_policy), the first from sft
    parents = {stage: json.loads((run / stage / "latest" / "manifest.json").read_text()).get("parent") or {}
               for stage in POLICY_STAGES}
    assert {stage: parent.get("stage") for stage, parent in parents.items()} == {
        "sft": "base", "grpo": "sft", "evolve": "grpo", "revise": "evolve", "dpo": "revise", "length_rl": "dpo"}
    assert "chain (newest first)" in out.stdout and "base/v1" in out.stdout
    assert "were not passed to `accelerate launch`" not in out.stdout + out.stderr  # every value is passed
    umask = os.umask(0o022)
    os.umask(umask)
    assert (run / "sft" / "latest" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert not list((run / "prm" / "latest").glob("eval"))  # a PRM is not evaluated as a policy
    bon = json.loads((run / "prm" / "latest" / "metrics.json").read_text())["best_of_n"]
    assert bon["n_problems"] == 20 and "prm_min" in bon and "random_expected_accuracy" in bon
    report = (run / "report.html").read_text()
    for stage in POLICY_STAGES:
        assert f"{stage}/v1" in report or f">{stage}<" in report, stage
    # a rerun skips completed stages and their evaluations (two stages, to keep the suite short: every
    # stage goes through the same StageContext skip). Not sft: its evaluation ran before the PRM existed,
    # so with the PRM now there (repair's verifier) a rerun evaluates it anew, as it should.
    again = _pipeline(tmp_path, RECIPE="recipes/smoke", STAGES="synth grpo")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already complete") == 2 and "[eval] already evaluated" in again.stdout
    assert sorted(p.name for p in (run / "grpo").iterdir() if not p.name.startswith(".")) == ["latest", "v1"]


@pytest.mark.slow
def test_pipeline_stops_at_failing_stage(tmp_path):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "sft.yaml").write_text((REPO / "recipes" / "tiny" / "sft.yaml").read_text() + "\nno_such_key: 1\n")
    out = _pipeline(tmp_path, RECIPE=str(recipe), STAGES="sft")
    assert out.returncode == 1
    assert "stage 'sft' FAILED" in out.stderr and "unknown key(s) 'no_such_key'" in out.stderr
