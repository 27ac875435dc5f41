"""The RL machinery shared by grpo and length_rl (stages/common/rl.py): gold-answer guard rails,
the optional PRM bonus, @latest_policy, the zero-spread share, and the recipes' dry runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stages.common.checkpoint import CheckpointError, checkpoint_key, open_stage, resolve_policy
from stages.common.config import ConfigError
from stages.common.data import DataFormatError, load_gold_problems
from stages.prm_lib.scorer import PRMScorer
from stages.rl_lib.stage import RLStageArguments, parse_reward_options, resolve_prm, to_grpo_rows
from stages.rl_lib.trainer import zero_spread_shares

REPO = Path(__file__).resolve().parents[1]


def _problems_file(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_problem_without_gold_is_an_error_naming_file_and_line(tmp_path):
    path = _problems_file(tmp_path, [{"id": "a", "question": "1+1?", "answer": "2"},
                                     {"id": "b", "question": "2+2?", "answer": "  "}])
    with pytest.raises(DataFormatError) as e:
        load_gold_problems([str(path)], seed=0, needed_by="GRPO")
    msg = str(e.value)
    assert "problems.jsonl" in msg and "2" in msg and "answer" in msg


def test_problem_rows_carry_prompt_gold_and_question():
    (problems,) = load_gold_problems(["arith:train:5"], seed=0, needed_by="GRPO").values()
    rows = to_grpo_rows(problems)
    assert len(rows) == 5
    assert rows[0]["prompt"][-1] == {"role": "user", "content": problems[0]["question"]}
    assert rows[0]["prompt"][0]["role"] == "system"
    assert rows[0]["answer"] == problems[0]["answer"] and rows[0]["question"] == problems[0]["question"]


def test_unparseable_gold_gives_none_not_a_free_reward():
    from rewards.registry import get_reward_funcs

    rows = to_grpo_rows([{"id": "x", "question": "q", "answer": "???"},
                         {"id": "y", "question": "q", "answer": "4"}])
    (correct,) = get_reward_funcs(["pot_correctness"])
    completion = [{"role": "assistant", "content": "```python\nprint(4)\n```"}]
    out = correct([r["prompt"] for r in rows], [completion, completion], answer=[r["answer"] for r in rows])
    assert out == [None, 1.0]


def test_zero_spread_shares_per_reward_and_nan_groups():
    import torch

    nan = math.nan
    rewards = torch.tensor([
        # group 1: correctness all 1 (zero spread), length varies
        [1.0, -0.1], [1.0, -0.2], [1.0, -0.3],
        # group 2: correctness varies, length constant
        [0.0, -0.1], [1.0, -0.1], [0.0, -0.1],
        # group 3: correctness unjudgeable (None) everywhere, length constant
        [nan, -0.2], [nan, -0.2], [nan, -0.2],
    ])
    shares = zero_spread_shares(rewards, 3)
    assert shares[0] == pytest.approx(1 / 2)  # the NaN group is left out
    assert shares[1] == pytest.approx(2 / 3)


def _args(**kw) -> RLStageArguments:
    return RLStageArguments(**kw)


def test_optional_prm_is_left_out_while_its_checkpoint_does_not_exist(tmp_path):
    names, weights, prm = resolve_prm(_args(prm_checkpoint="@prm", prm_required=False),
                                      ["pot_correctness", "prm_bonus", "brevity"], [1.0, 0.5, 1.0],
                                      {"prm_bonus": {"aggregation": "min"}}, tmp_path)
    assert names == ["pot_correctness", "brevity"] and weights == [1.0, 1.0] and prm is None


@pytest.mark.parametrize("args", [
    {"prm_checkpoint": "@prm", "prm_required": True},             # required and missing
    {"prm_checkpoint": "/nonexistent/prm", "prm_required": False},  # set explicitly but missing
    {"prm_checkpoint": None},                                     # prm_bonus without a checkpoint
])
def test_prm_bonus_errors(tmp_path, args):
    with pytest.raises(ConfigError, match="prm"):
        resolve_prm(_args(**args), ["pot_correctness", "prm_bonus"], None, {}, tmp_path)


class _FakeScorer:
    """A PRM scorer class as the launch modules pass one in: ``check(path)`` and ``(path).score``."""

    checked: list = []

    @classmethod
    def check(cls, path):
        cls.checked.append(path)


def test_existing_prm_checkpoint_is_wired_into_the_bonus(tmp_path):
    prm_dir = tmp_path / "prm_model"
    prm_dir.mkdir()
    (prm_dir / "config.json").write_text("{}")
    options: dict = {}
    names, _, prm = resolve_prm(_args(prm_checkpoint=str(prm_dir)), ["pot_correctness", "prm_bonus"], None, options,
                                tmp_path, scorer_factory=_FakeScorer)
    assert names == ["pot_correctness", "prm_bonus"]
    assert prm == str(prm_dir.resolve()) and options["prm_bonus"]["prm"] == prm
    assert _FakeScorer.checked[-1] == prm


def test_a_folder_that_is_not_a_prm_checkpoint_is_refused_before_training(tmp_path):
    policy_dir = tmp_path / "policy"  # a model folder, but no prm_config.json
    policy_dir.mkdir()
    (policy_dir / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="prm_config.json"):
        resolve_prm(_args(prm_checkpoint=str(policy_dir)), ["pot_correctness", "prm_bonus"], None, {}, tmp_path,
                    scorer_factory=PRMScorer)


def _fake_checkpoint(run_dir: Path, stage: str, with_model: bool = True) -> None:
    ckpt = open_stage(run_dir, stage, checkpoint_key(config={"s": stage}, parent=None, inputs=[], seed=0))
    if with_model:
        (ckpt.partial_dir / "config.json").write_text("{}")
    ckpt.finalize(metrics={})


def test_latest_policy_prefers_the_newest_stage_with_a_model(tmp_path):
    run = tmp_path / "r"
    with pytest.raises(CheckpointError, match="no complete policy"):
        resolve_policy("@latest_policy", run)
    _fake_checkpoint(run, "sft")
    assert resolve_policy("@latest_policy", run) == str(run / "sft")
    _fake_checkpoint(run, "grpo")
    _fake_checkpoint(run, "evolve", with_model=False)  # a data-only checkpoint is not a policy
    assert resolve_policy("@latest_policy", run) == str(run / "grpo")
    assert resolve_policy("@sft", run) == "@sft"


def test_reward_options_from_the_command_line():
    assert parse_reward_options('{"brevity": {"coef": 0.001}}') == {"brevity": {"coef": 0.001}}
    with pytest.raises(ConfigError, match="JSON"):
        parse_reward_options("{brevity")


@pytest.mark.parametrize("recipe", ["recipes/tiny/grpo.yaml", "recipes/tiny/length_rl.yaml",
                                    "recipes/qwen2.5-math-1.5b/grpo.yaml", "recipes/qwen2.5-math-1.5b/length_rl.yaml"])
def test_recipes_parse_with_valid_rewards(recipe):
    from trl import GRPOConfig, ModelConfig

    from rewards.registry import get_reward_funcs
    from stages.common.config import parse_config

    args, cfg, model_args = parse_config((RLStageArguments, GRPOConfig, ModelConfig),
                                         ["--config", str(REPO / recipe), "--use_vllm", "false", "--bf16", "false"])
    options = parse_reward_options(args.reward_options)
    names = [n for n in args.reward_funcs if n != "prm_bonus"]
    options.pop("prm_bonus", None)
    assert len(get_reward_funcs(names, **options)) == len(names)
    assert cfg.reward_weights is None or len(cfg.reward_weights) == len(args.reward_funcs)
    assert model_args.model_name_or_path


def test_misspelt_reward_option_fails_before_training(tmp_path, capsys):
    from stages.grpo import main

    with pytest.raises(ConfigError, match="coeff"):
        main(["--config", str(REPO / "recipes/tiny/grpo.yaml"), "--runs_dir", str(tmp_path), "--run", "r",
              "--model_name_or_path", "tiny", "--reward_options", '{"brevity": {"coeff": 0.1}}', "--dry_run", "true"])
