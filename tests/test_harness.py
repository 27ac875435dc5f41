"""The stage harness: one lifecycle for every stage (parse -> prepare -> open the checkpoint ->
skip / dry run -> build -> finalize), the manifest's file inventory and the parent check, the
stage lock, and one-line errors (exit 2) for every stage, synth included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stages.common.checkpoint import (
    CheckpointError,
    StageLock,
    checkpoint_key,
    file_inventory,
    open_stage,
    resolve_parent,
)
from stages.common.config import ConfigError
from stages.harness import Stage, StageArguments, StageConfigs, StageContext, StagePlan, StageResult, cli

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------------
# a toy stage: the lifecycle without a model


@dataclass
class ToyArguments(StageArguments):
    words: list[str] = field(default_factory=lambda: ["a", "b"])
    fail_in_prepare: bool = False


CALLS: list[str] = []


def _prepare(configs: StageConfigs) -> StagePlan:
    CALLS.append("prepare")
    if configs.args.fail_in_prepare:
        raise ConfigError("words: the toy stage refuses this recipe")
    return StagePlan(parent=None, details={"words": len(configs.args.words)}, data={"words": configs.args.words})


def _build(ctx: StageContext, plan: StagePlan) -> StageResult:
    CALLS.append("build")
    ctx.write_jsonl("words.jsonl", [{"word": w} for w in plan.data["words"]])
    return StageResult({"n": len(plan.data["words"])})


TOY = Stage("toy", (ToyArguments,), prepare=_prepare, build=_build)


def test_lifecycle_builds_skips_and_versions(tmp_path, capsys):
    CALLS.clear()
    argv = ["--run", "r", "--runs_dir", str(tmp_path)]
    out = TOY.run(argv)
    assert out == tmp_path / "r" / "toy" / "v1" and CALLS == ["prepare", "build"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["metrics"] == {"n": 2}
    assert {f["path"] for f in manifest["files"]} == {"metrics.json", "words.jsonl"}
    assert all(f["bytes"] == (out / f["path"]).stat().st_size for f in manifest["files"])
    assert (tmp_path / "r" / "toy" / "latest").resolve() == out
    # same config: skipped without building; another config: a new version
    assert TOY.run(argv) == out and CALLS == ["prepare", "build", "prepare"]
    assert "already complete" in capsys.readouterr().out
    assert TOY.run([*argv, "--words", "x"]).name == "v2"


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    assert TOY.run(["--run", "r", "--runs_dir", str(tmp_path), "--dry_run", "true"]) is None
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] and plan["action"] == "build" and plan["words"] == 2
    assert plan["would_write"].endswith("toy/v1")
    assert not (tmp_path / "r").exists()


def test_a_user_error_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["toy", "--run", "r", "--runs_dir", str(tmp_path), "--fail_in_prepare", "true"])
    with pytest.raises(SystemExit) as e:
        cli(TOY)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "stages.toy: error: words: the toy stage refuses this recipe"
    monkeypatch.setattr(sys, "argv", ["toy", "--wrods", "x"])
    with pytest.raises(SystemExit) as e:
        cli(TOY)
    assert e.value.code == 2 and "--wrods" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the parent check


def _checkpoint(run_dir: Path, stage: str, files: dict[str, bytes]) -> Path:
    ckpt = open_stage(run_dir, stage, checkpoint_key(config={"stage": stage}, parent=None, inputs=[], seed=0))
    for name, data in files.items():
        (ckpt.partial_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (ckpt.partial_dir / name).write_bytes(data)
    return ckpt.finalize(metrics={})


def test_manifest_lists_every_file_and_a_damaged_parent_is_refused(tmp_path):
    out = _checkpoint(tmp_path / "r", "sft", {"model.safetensors": b"w" * 100, "sub/tokenizer.json": b"{}"})
    inventory = {f["path"]: f for f in json.loads((out / "manifest.json").read_text())["files"]}
    assert set(inventory) == {"metrics.json", "model.safetensors", "sub/tokenizer.json"}
    assert inventory["model.safetensors"]["bytes"] == 100 and len(inventory["model.safetensors"]["sha256"]) == 64
    assert resolve_parent(str(out)).kind == "checkpoint"
    (out / "model.safetensors").write_bytes(b"w" * 99)  # truncated
    with pytest.raises(CheckpointError, match=r"model\.safetensors has 99 bytes, its manifest says 100"):
        resolve_parent(str(tmp_path / "r" / "sft"))
    (out / "model.safetensors").write_bytes(b"x" * 100)  # same size, other bytes
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the sha256"):
        resolve_parent(str(out))
    (out / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        resolve_parent(str(out))
    assert file_inventory(out)  # the rest is still listed


@pytest.mark.slow
def test_a_stage_on_a_damaged_parent_exits_2_naming_the_file(tmp_path):
    """The new user's case: model.safetensors removed from the SFT checkpoint, then grpo."""
    run = tmp_path / "runs" / "r"
    sft = _checkpoint(run, "sft", {"config.json": b"{}", "model.safetensors": b"weights"})
    (sft / "model.safetensors").unlink()
    proc = subprocess.run([sys.executable, "-m", "stages.grpo", "--config", "recipes/tiny/grpo.yaml", "--run", "r",
                           "--runs_dir", str(tmp_path / "runs")], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("stages.grpo: error:") and "model.safetensors is missing" in last
    assert not (run / "grpo").exists()  # refused before anything was built


def test_a_damaged_complete_version_is_not_skipped_silently(tmp_path):
    run = tmp_path / "r"
    key = checkpoint_key(config={"stage": "toy"}, parent=None, inputs=[], seed=0)
    ckpt = open_stage(run, "toy", key)
    (ckpt.partial_dir / "data.jsonl").write_text("{}\n")
    out = ckpt.finalize(metrics={})
    (out / "data.jsonl").write_text("{}\n{}\n")
    with pytest.raises(CheckpointError, match=r"data\.jsonl has 6 bytes"):
        open_stage(run, "toy", key)


# ---------------------------------------------------------------------------------------------
# one build at a time


def test_stage_lock_waits_then_names_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from stages.common.checkpoint import StageLock\n"
        f"lock = StageLock({str(tmp_path / 'sft')!r}).acquire(); print('held', flush=True); time.sleep(30)")],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(CheckpointError, match=rf"pid {holder.pid} on .* still holds the build lock"):
            StageLock(tmp_path / "sft", timeout_s=1.0).acquire()
        assert time.monotonic() - t0 >= 1.0
    finally:
        holder.kill()
        holder.wait()
    with StageLock(tmp_path / "sft", timeout_s=1.0):  # released by the kernel when its holder died
        pass


@pytest.mark.slow
def test_two_concurrent_builds_of_a_stage_make_one_version(tmp_path):
    """A user starting the same stage twice: one builds (the tiny base model too), the other waits
    for it and then skips; never a traceback, never a mixed version."""
    cmd = [sys.executable, "-m", "stages.synth", "--config", "recipes/tiny/synth.yaml", "--problems",
           "arith:train:300", "--run", "conc", "--runs_dir", str(tmp_path / "runs")]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    stdout = "".join(out for out, _ in outs)
    assert stdout.count("[synth] wrote") == 1 and stdout.count("already complete") == 1
    run = tmp_path / "runs" / "conc"
    assert sorted(p.name for p in (run / "synth").iterdir() if p.name.startswith("v")) == ["v1"]
    assert sorted(p.name for p in (run / "base").iterdir() if p.name.startswith("v")) == ["v1"]
    assert len((run / "synth" / "v1" / "verified.jsonl").read_text().splitlines()) == 300


@pytest.mark.slow
def test_synth_user_errors_exit_2_with_one_line(tmp_path):
    for extra, expected in ((["--teachers", "oracle"], "unknown teacher 'oracle'"),
                            (["--teachers", "openai", "--openai_model", "m", "--api_key_env", "MF_NO_SUCH_KEY"],
                             "$MF_NO_SUCH_KEY"),
                            (["--verbose_fraction", "2"], "verbose_fraction must be in [0, 1]")):
        proc = subprocess.run([sys.executable, "-m", "stages.synth", "--config", "recipes/tiny/synth.yaml",
                               "--run", "e", "--runs_dir", str(tmp_path), *extra], cwd=REPO, env=_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("stages.synth: error:") and expected in proc.stderr


# ---------------------------------------------------------------------------------------------
# the journal of finished items


def test_journal_keeps_finished_items_and_redoes_a_torn_one(tmp_path):
    from stages.harness.journal import Journal

    path = tmp_path / "samples.journal.jsonl"
    journal = Journal(path)
    journal.append([{"id": "p1", "sample": 0}, {"id": "p1", "sample": 1}])
    journal.finish_with([], ["p2"])  # an item that ended with nothing to keep
    with path.open("a") as fh:  # p3 half written, then a kill mid-line
        fh.write(json.dumps({"id": "p3", "sample": 0}) + "\n" + '{"id": "p3", "sam')
    again = Journal(path)
    assert again.done == {"p1", "p2"}
    assert [(r["id"], r["sample"]) for r in again.rows()] == [("p1", 0), ("p1", 1)]
    again.append([{"id": "p3", "sample": 0}])
    assert Journal(path).done == {"p1", "p2", "p3"}


def test_the_parents_own_measurement_is_reused_only_when_it_is_the_same_measurement():
    from types import SimpleNamespace

    from stages.common.data import load_problems
    from stages.harness.policy import eval_identity, parent_eval

    args = SimpleNamespace(eval_max_new_tokens=128, eval_batch_size=100)
    sets = {"arith:test:20": load_problems("arith:test:20"), "arith:test:10:0:levels=4": load_problems(
        "arith:test:10:0:levels=4")}
    parent = {"eval": {s: {"pass@1": 0.5, "n": len(p), "identity": eval_identity(p, args)} for s, p in sets.items()}}
    reused = parent_eval(parent, sets, args)
    assert reused is not None and all(m["reused_from_parent"] and m["pass@1"] == 0.5 for m in reused.values())
    assert parent_eval(parent, sets, SimpleNamespace(eval_max_new_tokens=64, eval_batch_size=100)) is None
    assert parent_eval(parent, {**sets, "arith:test:30": load_problems("arith:test:30")}, args) is None
    assert parent_eval(parent, {"arith:test:20": load_problems("arith:test:20", seed=1)}, args) is None
    assert parent_eval({"eval": {s: {"pass@1": 0.5} for s in sets}}, sets, args) is None  # no identity recorded
    assert parent_eval(None, sets, args) is None


def test_pass_at_1_leaves_unreadable_golds_out_and_counts_them():
    from stages.harness.policy import pass_at_1

    rows = [{"correct": True, "status": "ok", "n_tokens": 10}, {"correct": False, "status": "ok", "n_tokens": 20},
            {"correct": None, "status": "ok", "n_tokens": 99}]
    m = pass_at_1(rows)
    assert m["n"] == 2 and m["pass@1"] == 0.5 and m["unreadable_gold"] == 1 and m["mean_completion_tokens"] == 15
