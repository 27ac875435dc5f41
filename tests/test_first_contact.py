"""What a new user meets first: `run_pipeline.sh --help` and `--list` (which run nothing), the
values every `accelerate launch` gets (so accelerate prints no "not passed" warning), and
checkpoint files that carry the umask's permissions (not mkstemp's 0600).

The shell tests run a copy of run_pipeline.sh in a scratch repository whose bootstrap and
accelerate are stubs that record their calls, so nothing touches .venv or a real run.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from safetensors.numpy import save_file

from stages.common.checkpoint import checkpoint_key, open_stage, read_manifest
from stages.common.data import atomic_write_text, current_umask, write_json, write_jsonl

REPO = Path(__file__).resolve().parents[1]
WARNING = "were not passed to `accelerate launch`"
STUB_BOOTSTRAP = 'touch "$(dirname "$0")/../bootstrap-ran"\n'
# Records each launch's arguments, one JSON list per line.
STUB_ACCELERATE = """#!/usr/bin/env bash
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$(dirname "$0")/../../launches.jsonl"
"""


def _scratch_repo(root: Path, stages=("synth", "sft", "prm", "grpo"), venv: bool = True) -> Path:
    repo = root / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "run_pipeline.sh", repo / "run_pipeline.sh")
    (repo / "scripts" / "bootstrap.sh").write_text(STUB_BOOTSTRAP)
    (repo / "stages").mkdir()
    for stage in stages:
        (repo / "stages" / f"{stage}.py").write_text("")
    (repo / "eval").mkdir()
    (repo / "eval" / "gsm8k.py").write_text("")
    shutil.copytree(REPO / "accelerate_configs", repo / "accelerate_configs")
    if venv:
        (repo / ".venv" / "bin").mkdir(parents=True)
        accelerate = repo / ".venv" / "bin" / "accelerate"
        accelerate.write_text(STUB_ACCELERATE)
        accelerate.chmod(0o755)
        (repo / ".venv" / "bin" / "python").symlink_to(sys.executable)
    return repo


def _recipe(repo: Path, name: str, files: dict[str, str]) -> None:
    folder = repo / "recipes" / name
    folder.mkdir(parents=True)
    for file, text in files.items():
        (folder / file).write_text(text)


def _run(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in {"OMP_NUM_THREADS", "RECIPE", "RUN", "RUNS_DIR",
                                                                  "STAGES", "ACCELERATE_CONFIG", "NUM_PROCESSES"}}
    return subprocess.run(["bash", str(repo / "run_pipeline.sh"), *args], capture_output=True, text=True,
                          env={**environ, **env}, timeout=60)


def _untouched(repo: Path) -> None:
    assert not (repo / "bootstrap-ran").exists(), "the bootstrap ran"
    assert not (repo / "launches.jsonl").exists(), "a stage was launched"
    assert not (repo / "runs").exists()


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--seed", "1", "--help"]])
def test_help_prints_the_scripts_usage_and_runs_nothing(tmp_path, args):
    repo = _scratch_repo(tmp_path)
    _recipe(repo, "tiny", {"synth.yaml": "", "sft.yaml": ""})
    out = _run(repo, *args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: ./run_pipeline.sh")
    for word in ("RECIPE", "RUN ", "RUNS_DIR", "STAGES", "ACCELERATE_CONFIG", "NUM_PROCESSES", "--list",
                 "STAGES=sft ./run_pipeline.sh", "-m stages.sft", "report.html", "Extra arguments go to every stage"):
        assert word in out.stdout, word
    assert "--config" in out.stdout and out.stdout.count("usage:") == 1  # not a stage's argparse screen
    _untouched(repo)


def _checkpoint(stage_dir: Path, version: int, status: str = "complete", latest: bool = True) -> None:
    folder = stage_dir / f"v{version}"
    folder.mkdir(parents=True)
    write_json(folder / "manifest.json", {"stage": stage_dir.name, "status": status, "metrics": {"status": "complete"}})
    if latest:
        (stage_dir / "latest").unlink(missing_ok=True)
        (stage_dir / "latest").symlink_to(folder.name)


@pytest.mark.parametrize("venv", [True, False], ids=["venv-python", "shell-only"])
def test_list_prints_the_recipes_stages_in_order_and_which_are_complete(tmp_path, venv):
    repo = _scratch_repo(tmp_path, stages=("synth", "sft", "prm", "grpo", "length_rl"), venv=venv)
    _recipe(repo, "demo", {f"{s}.yaml": "" for s in ("synth", "sft", "grpo", "length_rl", "dpo")})
    runs = tmp_path / "runs"
    _checkpoint(runs / "r" / "synth", 1)
    _checkpoint(runs / "r" / "sft", 1)
    _checkpoint(runs / "r" / "sft", 2)
    (runs / "r" / "sft" / "v3.partial").mkdir()
    (runs / "r" / "grpo" / "v1.partial").mkdir(parents=True)
    (runs / "r" / "grpo" / "v2.partial").mkdir()
    _checkpoint(runs / "r" / "length_rl", 1, status="running")  # only a nested "status" says complete

    out = _run(repo, "--list", RECIPE="recipes/demo", RUN="r", RUNS_DIR=str(runs),
               STAGES="synth sft prm grpo dpo length_rl")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("  ")]
    assert [row[0] for row in rows] == ["synth", "sft", "grpo", "length_rl"]  # prm: no recipe; dpo: no module
    assert rows[0][1:] == ["complete", f"{runs}/r/synth/v1"]
    assert rows[1][1:] == ["complete", f"{runs}/r/sft/v2"]
    assert rows[2][1:3] == ["interrupted", f"{runs}/r/grpo/v2.partial"]
    assert rows[3][1:] == ["not", "run"]
    left_out = [line for line in out.stdout.splitlines() if line.startswith("left out")]
    assert len(left_out) == 1 and left_out[0].rsplit(":", 1)[1].split() == ["prm", "dpo"]
    _untouched(repo)

    missing = _run(repo, "--list", RECIPE="recipes/nope")
    assert missing.returncode == 2 and "recipes/nope" in missing.stderr
    _untouched(repo)


def _launches(repo: Path) -> list[tuple[str, list[str]]]:
    """(module, arguments after `launch`) of every recorded launch, in order."""
    calls = [json.loads(line) for line in (repo / "launches.jsonl").read_text().splitlines()]
    assert all(call[0] == "launch" for call in calls)
    return [(call[call.index("-m") + 1], call[1:]) for call in calls]


def _flag(call: list[str], name: str) -> str:
    assert call.count(name) == 1, (name, call)
    return call[call.index(name) + 1]


def test_every_launch_gets_threads_dynamo_and_the_recipes_mixed_precision(tmp_path):
    repo = _scratch_repo(tmp_path, stages=("synth", "sft", "prm", "grpo"))
    _recipe(repo, "base", {"grpo.yaml": "fp16: true\n", "prm.yaml": "bf16: true\n"})
    _recipe(repo, "demo", {
        "synth.yaml": "seed: 0\n",
        "sft.yaml": "dtype: float32\nbf16: true   # a comment\n",
        "prm.yaml": "base: ../base/prm.yaml\nbf16: false\n",  # the nearest statement wins
        "grpo.yaml": "base: '../base/grpo.yaml'\n",  # through the base chain
        "eval.yaml": "dtype: bfloat16\n",  # a load dtype, not mixed precision
    })
    out = _run(repo, "--seed", "3", RECIPE="recipes/demo", RUNS_DIR=str(tmp_path / "runs"),
               ACCELERATE_CONFIG="accelerate_configs/cpu.yaml")
    assert out.returncode == 0, out.stderr
    calls = _launches(repo)
    assert [(module, _flag(call, "--mixed_precision")) for module, call in calls] == [
        ("stages.synth", "no"), ("stages.sft", "bf16"), ("eval.gsm8k", "no"), ("stages.prm", "no"),
        ("stages.grpo", "fp16"), ("eval.gsm8k", "no"),
    ]
    for module, call in calls:
        assert _flag(call, "--config_file") == "accelerate_configs/cpu.yaml"
        assert _flag(call, "--num_processes") == "1"
        assert _flag(call, "--dynamo_backend") == "no"
        assert 1 <= int(_flag(call, "--num_cpu_threads_per_process")) <= os.cpu_count()
        assert (call[-2:] == ["--seed", "3"]) == module.startswith("stages.")  # extra arguments: stages only

    (repo / "launches.jsonl").unlink()
    out = _run(repo, RECIPE="recipes/demo", RUNS_DIR=str(tmp_path / "runs"), STAGES="synth",
               ACCELERATE_CONFIG="accelerate_configs/cpu.yaml", OMP_NUM_THREADS="3")
    assert out.returncode == 0, out.stderr
    assert _flag(_launches(repo)[0][1], "--num_cpu_threads_per_process") == "3"
    (repo / "launches.jsonl").unlink()
    out = _run(repo, RECIPE="recipes/demo", RUNS_DIR=str(tmp_path / "runs"), STAGES="synth",
               ACCELERATE_CONFIG="accelerate_configs/single_gpu.yaml")
    assert out.returncode == 0, out.stderr
    assert _flag(_launches(repo)[0][1], "--num_cpu_threads_per_process") == "1"  # accelerate's GPU default


def test_the_pipelines_launch_values_leave_accelerate_nothing_to_warn_about(tmp_path):
    """The real accelerate 1.x, given the flags the pipeline recorded above, prints no "not passed"
    warning; without them it does whenever it would pick several threads per CPU process. ~6 s."""
    repo = _scratch_repo(tmp_path, stages=("synth",))
    _recipe(repo, "demo", {"synth.yaml": ""})
    assert _run(repo, RECIPE="recipes/demo", RUNS_DIR=str(tmp_path / "runs"),
                ACCELERATE_CONFIG=str(REPO / "accelerate_configs" / "cpu.yaml")).returncode == 0
    [(_, call)] = _launches(repo)
    flags = call[:call.index("-m")]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}

    def launch(launch_flags: list[str]) -> str:
        done = subprocess.run([accelerate, "launch", *launch_flags, "--main_process_port", "0", "-m", "platform"],
                              capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    assert WARNING not in launch(flags)
    bare = launch(["--config_file", _flag(call, "--config_file"), "--num_processes", "1"])
    # accelerate spreads threads over the physical cores psutil counts
    assert (WARNING in bare) == ((psutil.cpu_count(logical=False) or 1) > 1)


# ---------------------------------------------------------------------------------------------
# Permissions


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=["umask022", "umask077", "umask002"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    return {str(f.relative_to(folder)): stat.S_IMODE(f.stat().st_mode) for f in folder.rglob("*") if f.is_file()}


def test_checkpoint_files_get_the_permissions_the_umask_gives(tmp_path, umask):
    assert current_umask() == umask
    wanted = 0o666 & ~umask
    key = checkpoint_key(config={"lr": 1}, parent=None, inputs=[], seed=0)
    ckpt = open_stage(tmp_path / "run", "sft", key)
    work = ckpt.work_dir
    save_file({"w": np.zeros(4, dtype=np.float32)}, str(work / "model.safetensors"))  # a library's temp file
    os.close(os.open(work / "adapter_model.safetensors", os.O_CREAT | os.O_WRONLY, 0o600))  # as mkstemp makes
    (work / "tokenizer.json").write_text("{}")
    write_jsonl(work / "eval_details.jsonl", [{"id": "a"}])
    write_json(work / "log_history.json", [])
    (work / "merged").mkdir()
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(work / "merged" / "model.safetensors"))
    final = ckpt.finalize(metrics={"pass@1": 1.0})
    assert read_manifest(final) is not None
    modes = _modes(final)
    assert {"manifest.json", "metrics.json", "model.safetensors", "merged/model.safetensors"} <= set(modes)
    assert modes == dict.fromkeys(modes, wanted)


def test_atomic_writes_leave_the_umask_permissions_even_over_a_private_file(tmp_path, umask):
    path = tmp_path / "results.json"
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    atomic_write_text(path, "{}\n")
    write_jsonl(tmp_path / "new" / "rows.jsonl", [{"a": 1}])
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "new" / "rows.jsonl").stat().st_mode) == 0o666 & ~umask
    assert path.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "results.json"]  # no temporary file left
