"""Versioned checkpoints: atomic publish, skip on same key, resume of .partial, refusal of
incomplete parents, lineage; and recipe parsing errors that name the key and line."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

from stages.common.checkpoint import (
    CheckpointError,
    checkpoint_key,
    latest_version,
    lineage,
    open_stage,
    read_manifest,
    resolve_parent,
)
from stages.common.config import ConfigError, parse_config, resolved_config


def _build(run_dir, stage, config, parent=None, inputs=()):
    key = checkpoint_key(config=config, parent=parent, inputs=list(inputs), seed=0)
    ckpt = open_stage(run_dir, stage, key)
    if ckpt.status != "done":
        (ckpt.partial_dir / "weights.bin").write_bytes(b"w")
        ckpt.finalize(metrics={"score": 1.0})
    return ckpt


def test_version_publish_skip_and_new_version(tmp_path):
    run = tmp_path / "run"
    c1 = _build(run, "sft", {"lr": 1})
    assert c1.final_dir.name == "v1" and not c1.partial_dir.exists()
    m = read_manifest(c1.final_dir)
    assert m["status"] == "complete" and m["stage"] == "sft" and m["version"] == 1
    assert {"config_sha256", "packages", "git_commit", "started_at", "finished_at", "parent", "inputs"} <= set(m)
    assert json.loads((c1.final_dir / "metrics.json").read_text()) == {"score": 1.0}
    assert (run / "sft" / "latest").resolve() == c1.final_dir.resolve()
    # same key: done, nothing new written
    again = open_stage(run, "sft", checkpoint_key(config={"lr": 1}, parent=None, inputs=[], seed=0))
    assert again.status == "done" and again.final_dir == c1.final_dir
    assert sorted(p.name for p in (run / "sft").iterdir()) == ["latest", "v1"]
    # another config: v2, and latest moves
    c2 = _build(run, "sft", {"lr": 2})
    assert c2.final_dir.name == "v2" and latest_version(run / "sft") == c2.final_dir


def test_changed_input_file_is_a_new_build(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("a\n")
    c1 = _build(tmp_path / "run", "sft", {"lr": 1}, inputs=[data])
    data.write_text("b\n")
    c2 = _build(tmp_path / "run", "sft", {"lr": 1}, inputs=[data])
    assert (c1.version, c2.version) == (1, 2)


def test_interrupted_build_resumes_in_same_partial(tmp_path):
    run = tmp_path / "run"
    key = checkpoint_key(config={"lr": 1}, parent=None, inputs=[], seed=0)
    first = open_stage(run, "sft", key)
    assert first.status == "new"
    step = first.trainer_dir / "checkpoint-10"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    broken = first.trainer_dir / "checkpoint-20"  # killed while saving: no complete trainer_state.json
    broken.mkdir()
    (broken / "trainer_state.json").write_text("{trunc")
    second = open_stage(run, "sft", key)
    assert second.status == "resume" and second.partial_dir == first.partial_dir
    assert second.last_trainer_checkpoint() == str(step)
    # a partial folder is never taken for a checkpoint, nor is a version without manifest
    assert latest_version(run / "sft") is None
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_parent(str(first.partial_dir))
    final = second.finalize(metrics={})
    assert final.name == "v1" and not (final / "trainer").exists()


def test_parent_without_complete_manifest_is_refused(tmp_path):
    v = tmp_path / "run" / "sft" / "v1"
    v.mkdir(parents=True)
    (v / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_parent(str(v))
    (v / "manifest.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_parent(str(v))
    with pytest.raises(CheckpointError, match="without any complete version"):
        resolve_parent(str(tmp_path / "run" / "sft"))
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_parent(str(tmp_path / "missing"))
    assert resolve_parent("Qwen/Qwen2.5-Math-1.5B").kind == "hub"


def test_lineage_chain_and_cli(tmp_path):
    run = tmp_path / "run"
    base = _build(run, "base", {"b": 1})
    sft = _build(run, "sft", {"lr": 1}, parent=resolve_parent(str(base.final_dir)))
    grpo = _build(run, "grpo", {"kl": 0.1}, parent=resolve_parent(str(run / "sft")))
    chain = lineage(grpo.final_dir)
    assert [c["stage"] for c in chain] == ["grpo", "sft", "base"]
    assert chain[1]["parent"]["stage"] == "base" and chain[0]["parent"]["stage"] == "sft"
    out = subprocess.run([sys.executable, "-m", "stages.common", "lineage", str(run)], capture_output=True,
                         text=True, check=True).stdout
    assert "grpo/v1" in out and "<- sft/v1" in out and "<- base/v1" in out
    assert sft.final_dir.name == "v1"


@dataclass
class _Args:
    alpha: int = 1
    name: str = "x"


def test_recipe_unknown_key_named_with_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("alpha: 3\n# comment\nbogus: 1\n")
    with pytest.raises(ConfigError, match=r"r.yaml: unknown key\(s\) 'bogus' \(line 3\)"):
        parse_config([_Args], ["--config", str(recipe)])
    recipe.write_text("alpha: 3\n")
    (args,) = parse_config([_Args], ["--config", str(recipe), "--name", "y"])
    assert (args.alpha, args.name) == (3, "y")
    with pytest.raises(ConfigError, match="unknown command-line argument"):
        parse_config([_Args], ["--config", str(recipe), "--nope", "1"])
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config([_Args], ["--config", str(tmp_path / "missing.yaml")])


def test_recipe_base_chain_overrides_key_by_key(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "s.yaml").write_text("alpha: 3\nname: base\n")
    (tmp_path / "variant").mkdir()
    mid = tmp_path / "variant" / "mid.yaml"
    mid.write_text("base: ../tiny/s.yaml\nalpha: 4\n")
    top = tmp_path / "variant" / "s.yaml"
    top.write_text("# a variant\nbase: mid.yaml\nname: top\n")
    import tempfile
    from pathlib import Path

    before = set(Path(tempfile.gettempdir()).glob("recipe-*.yaml"))
    (args,) = parse_config([_Args], ["--config", str(top)])
    assert (args.alpha, args.name) == (4, "top")
    assert set(Path(tempfile.gettempdir()).glob("recipe-*.yaml")) == before  # the merged file is removed
    (args,) = parse_config([_Args], ["--config", str(top), "--alpha", "9"])  # the CLI still wins
    assert (args.alpha, args.name) == (9, "top")
    (tmp_path / "tiny" / "s.yaml").write_text("alpha: 3\nbogus: 1\n")
    with pytest.raises(ConfigError, match=r"s.yaml: unknown key\(s\) 'bogus' \(line 2\)"):
        parse_config([_Args], ["--config", str(top)])  # an error in a base names the base file
    mid.write_text("base: ../tiny/nope.yaml\n")
    with pytest.raises(ConfigError, match=r"mid.yaml: 'base' \(line 1\) names .*nope.yaml', which does not exist"):
        parse_config([_Args], ["--config", str(top)])
    mid.write_text("base: s.yaml\n")
    with pytest.raises(ConfigError, match="makes a cycle"):
        parse_config([_Args], ["--config", str(top)])


def test_resolved_config_ignores_logging_fields():
    from trl import SFTConfig

    a = SFTConfig(output_dir="/a", use_cpu=True, bf16=False, logging_steps=5, learning_rate=1e-3)
    b = SFTConfig(output_dir="/b", use_cpu=True, bf16=False, logging_steps=50, learning_rate=1e-3)
    c = SFTConfig(output_dir="/b", use_cpu=True, bf16=False, logging_steps=50, learning_rate=2e-3)
    assert resolved_config(a) == resolved_config(b) != resolved_config(c)
