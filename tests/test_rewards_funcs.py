"""The TRL reward functions and the registry (rewards.functions, rewards.lengths, rewards.registry),
called the way GRPOTrainer calls them. The PoT correctness reward with the real sandbox is in
tests/test_rewards_pot.py; here correctness comes from CoT extraction (mode="cot")."""

from __future__ import annotations

import logging
import math
import multiprocessing
import pickle
import socket
from types import SimpleNamespace

import pytest

import rewards.lengths as lengths
from rewards.functions import COSINE_MAX_LENGTH, PRMBonus, problem_text
from rewards.lengths import Ramp, completion_lengths, cosine_length_reward, dapo_overlong_penalty
from rewards.registry import REWARDS, get_reward_funcs
from stages.common.steps import split_solution


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def state(step: int, max_steps: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, max_steps=max_steps)  # the two TrainerState fields read


# ---------------------------------------------------------------------------------------------
# registry


def test_registry_builds_named_trl_functions() -> None:
    names = ["cot_correctness", "format", "brevity", "dapo_overlong"]
    funcs = get_reward_funcs(names, dapo_overlong={"max_length": 64}, tokenizer=None, sandbox=None)
    assert [f.__name__ for f in funcs] == names
    assert {"pot_correctness", "cot_correctness", "pot_format", "brevity", "kimi_length", "dapo_overlong",
            "cosine_length", "prm_bonus"} <= set(REWARDS)


def test_registry_reports_mistakes() -> None:
    with pytest.raises(ValueError, match="unknown reward 'brevty'"):
        get_reward_funcs(["brevty"])
    with pytest.raises(TypeError, match=r"reward 'brevity' has no option\(s\) \['cof'\]"):
        get_reward_funcs(["brevity"], brevity={"cof": 0.1})
    with pytest.raises(TypeError, match=r"\['max_lenght'\] are taken by none"):
        get_reward_funcs(["brevity"], max_lenght=10)
    with pytest.raises(ValueError, match="listed twice"):
        get_reward_funcs(["brevity", "brevity"])
    with pytest.raises(TypeError, match="max_length"):
        get_reward_funcs(["dapo_overlong"])  # L_max has no sensible default


def test_registry_imports_user_rewards() -> None:
    (f,) = get_reward_funcs(["rewards.functions:Brevity"], **{"rewards.functions:Brevity": {"coef": 0.5}})
    assert f.__name__ == "rewards.functions:Brevity"
    assert f([""], ["a"], completion_ids=[[1, 2]]) == [-1.0]


# ---------------------------------------------------------------------------------------------
# correctness and format


def test_cot_correctness_and_none_for_unparseable_gold() -> None:
    (f,) = get_reward_funcs(["cot_correctness"])
    completions = [conv("3 + 4 = 7\n#### 7"), conv("The answer is 8."), conv("#### 7"), conv("so she")]
    assert f(["p"] * 4, completions, answer=["7", "7", "", "7"]) == [1.0, 0.0, None, 0.0]


def test_missing_gold_column_is_a_clear_error() -> None:
    (f,) = get_reward_funcs(["cot_correctness"])
    with pytest.raises(KeyError, match="needs the dataset column 'answer'.*'question'"):
        f(["p"], ["#### 7"], question=["q"], trainer_state=None)


def test_pot_format() -> None:
    (f,) = get_reward_funcs(["pot_format"])
    completions = [
        "```python\nx = 3\nprint(x)\n```",
        conv("Let me compute.\n```python\nfor i in range(2):\n    print(i)\n```\nDone."),
        "```python\nx = 3\n```",  # prints nothing
        "```python\nprint(1)\n```\n```python\nprint(2)\n```",  # two blocks
        "```python\nprint(1\n```",  # does not parse
        "print(3)",  # no block
    ]
    assert f(["p"] * 6, completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# brevity and length shapes


def test_brevity_counts_completion_ids() -> None:
    (f,) = get_reward_funcs(["brevity"])
    out = f(["p", "p"], ["short", "a much longer completion"], completion_ids=[[1] * 10, [1] * 250])
    assert out == pytest.approx([-0.002, -0.05])
    (g,) = get_reward_funcs(["brevity"], brevity={"coef": 0.01})
    assert g(["p"], ["x"], completion_ids=[[1] * 3]) == pytest.approx([-0.03])


def test_brevity_coefficient_ramps_with_training_progress() -> None:
    (lin,) = get_reward_funcs(["brevity"], brevity={"coef": 0.0002, "coef_start": 0.0, "schedule": "linear"})
    ids = [[1] * 1000]
    assert lin(["p"], ["x"], completion_ids=ids, trainer_state=state(0, 100)) == pytest.approx([0.0])
    assert lin(["p"], ["x"], completion_ids=ids, trainer_state=state(50, 100)) == pytest.approx([-0.1])
    assert lin(["p"], ["x"], completion_ids=ids, trainer_state=state(100, 100)) == pytest.approx([-0.2])
    assert lin(["p"], ["x"], completion_ids=ids) == pytest.approx([-0.2])  # outside training: the final value
    ramp = Ramp(0.0, 1.0, "cosine", begin=0.2, finish=0.6)
    assert ramp.value(0.1) == 0.0 and ramp.value(0.7) == 1.0
    assert ramp.value(0.3) == pytest.approx((1 - math.cos(math.pi * 0.25)) / 2)
    with pytest.raises(ValueError, match="schedule"):
        Ramp(0.0, 1.0, "exp")


def test_brevity_only_correct() -> None:
    (f,) = get_reward_funcs(["brevity"], brevity={"only_correct": True, "coef": 0.1}, mode="cot")
    out = f(["p"] * 3, ["#### 5", "#### 6", "#### 5"], answer=["5", "5", ""], completion_ids=[[1] * 10] * 3)
    assert out[:2] == pytest.approx([-1.0, 0.0]) and out[2] is None


def test_token_lengths_from_a_tokenizer(tmp_path) -> None:
    # a real byte-level BPE tokenizer, trained here (stages.common.tiny's builder imports torch: slow)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # deferred: heavy import
    from transformers import PreTrainedTokenizerFast  # deferred: heavy import

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["the answer is 42 apples", "print(x + 1)"] * 50, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    texts = ["the answer is 42", "print(x + 1)\nprint(2)"]
    expected = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert expected != [len(t.split()) for t in texts]
    assert completion_lengths(texts, tokenizer=tok) == expected
    tok.save_pretrained(tmp_path)
    assert completion_lengths([conv(t) for t in texts], tokenizer=str(tmp_path)) == expected


def test_whitespace_fallback_warns(caplog) -> None:
    lengths._warned_whitespace = False
    with caplog.at_level(logging.WARNING, logger="rewards.lengths"):
        assert completion_lengths(["a b  c", conv("d e")]) == [3, 2]
    assert "not tokens" in caplog.text


def test_kimi_length_groups_by_prompt() -> None:
    (f,) = get_reward_funcs(["kimi_length"], mode="cot")
    # two interleaved groups (prompt A, prompt B); B's completions all have the same length
    prompts = [[{"role": "user", "content": q}] for q in ("A", "B", "A", "B", "A")]
    completions = ["#### 1", "#### 2", "#### 1", "#### 9", "#### 3"]
    ids = [[0] * 10, [0] * 7, [0] * 20, [0] * 7, [0] * 30]
    out = f(prompts, completions, answer=["1", "2", "1", "2", "1"], completion_ids=ids)
    # A: lengths 10, 20, 30 -> lambda 0.5, 0, -0.5; the wrong one gets min(0, lambda)
    assert out == pytest.approx([0.5, 0.0, 0.0, 0.0, -0.5])
    out = f(["A", "A"], ["#### 1", "#### 1"], answer=["1", ""], completion_ids=[[0] * 5, [0] * 9])
    assert out[0] == pytest.approx(0.5) and out[1] is None
    (w,) = get_reward_funcs(["kimi_length"], mode="cot", kimi_length={"weight": 2.0, "weight_start": 0.0,
                                                                      "schedule": "linear"})
    out = w(["A", "A"], ["#### 1", "#### 1"], answer=["1", "1"], completion_ids=[[0] * 5, [0] * 9],
            trainer_state=state(25, 100))
    assert out == pytest.approx([0.25, -0.25])


def test_dapo_overlong() -> None:
    assert [dapo_overlong_penalty(n, 100, 20) for n in (50, 80, 90, 100, 120)] == pytest.approx(
        [0.0, 0.0, -0.5, -1.0, -1.0])
    (f,) = get_reward_funcs(["dapo_overlong"], dapo_overlong={"max_length": 100})  # L_cache = 20
    assert f(["p"] * 2, ["a", "b"], completion_ids=[[0] * 85, [0] * 10]) == pytest.approx([-0.25, 0.0])


def test_dapo_overlong_without_a_soft_zone_is_a_hard_cut_off() -> None:
    assert [dapo_overlong_penalty(n, 100, 0) for n in (0, 99, 100, 101)] == [0.0, 0.0, 0.0, -1.0]
    (f,) = get_reward_funcs(["dapo_overlong"], dapo_overlong={"max_length": 100, "cache_length": 0})
    assert f(["p"] * 3, ["a", "b", "c"], completion_ids=[[0] * 100, [0] * 101, [0] * 5]) == [0.0, -1.0, 0.0]
    for bad in ({"max_length": 100, "cache_length": -1}, {"max_length": 100, "cache_length": 101}):
        with pytest.raises(ValueError, match="0 <= cache_length <= max_length"):
            get_reward_funcs(["dapo_overlong"], dapo_overlong=bad)


def test_cosine_length() -> None:
    assert cosine_length_reward(0, True, 100) == pytest.approx(1.0)
    assert cosine_length_reward(50, True, 100) == pytest.approx(0.75)
    assert cosine_length_reward(99, True, 100) == pytest.approx(0.5, abs=1e-3)
    assert cosine_length_reward(0, False, 100) == pytest.approx(-1.0)
    assert cosine_length_reward(50, False, 100) == pytest.approx(-0.75)
    assert cosine_length_reward(100, True, 100) == -1.0  # hit the limit
    (f,) = get_reward_funcs(["cosine_length"], mode="cot", cosine_length={"max_length": 100})
    out = f(["p"] * 3, ["#### 4", "#### 5", "#### 4"], answer=["4", "4", "x="], completion_ids=[[0] * 50] * 3)
    assert out[:2] == pytest.approx([0.75, -0.75]) and out[2] is None


def test_cosine_length_default_max_length() -> None:
    (f,) = get_reward_funcs(["cosine_length"], mode="cot")  # open-r1's cosine_max_len
    assert f.max_length == COSINE_MAX_LENGTH == 1000
    out = f(["p"] * 2, ["#### 4", "#### 4"], answer=["4", "4"], completion_ids=[[0] * 500, [0] * 1000])
    assert out == pytest.approx([0.75, -1.0])


# ---------------------------------------------------------------------------------------------
# PRM bonus


class StepScorer:
    """A small stand-in for stages.prm.PRMScorer (another issue): a step is 'correct' with
    probability 0.9, or 0.2 when it contains 'wrong'; it records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def score(self, problems: list[str], solutions: list[str]) -> list[list[float]]:
        self.calls.append((problems, solutions))
        return [[0.2 if "wrong" in s else 0.9 for s in split_solution(sol)] for sol in solutions]


SOLUTIONS = [
    "```python\na = 2\nb = a * 3\nprint(b)\n```\n#### 6",  # correct, 3 steps
    "```python\na = 2  # wrong\nprint(a * 3)\n```\n#### 6",  # correct, 2 steps, one weak
    "```python\nprint(7)\n```\n#### 7",  # wrong answer
    "#### 6",  # correct, one CoT step
]


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("min", [0.9, 0.2, 0.0, 0.9]),
        ("product", [0.9**3, 0.2 * 0.9, 0.0, 0.9]),
        ("last", [0.9, 0.9, 0.0, 0.9]),
        ("mean", [0.9, 0.55, 0.0, 0.9]),
    ],
)
def test_prm_bonus_aggregations_only_correct(aggregation: str, expected: list[float]) -> None:
    scorer = StepScorer()
    (f,) = get_reward_funcs(["prm_bonus"], mode="cot", prm_bonus={"prm": scorer, "aggregation": aggregation,
                                                                  "weight": 0.5})
    out = f(["q"] * 4, SOLUTIONS, answer=["6"] * 4, question=["Q1", "Q2", "Q3", "Q4"])
    assert out == pytest.approx([0.5 * e for e in expected])
    (problems, solutions), = scorer.calls  # one batched call, the wrong completion left out
    assert problems == ["Q1", "Q2", "Q4"] and solutions == [SOLUTIONS[0], SOLUTIONS[1], SOLUTIONS[3]]


def test_prm_bonus_without_correctness_gate_and_with_unparseable_gold() -> None:
    scorer = StepScorer()
    (f,) = get_reward_funcs(["prm_bonus"], prm_bonus={"prm": scorer, "only_correct": False})
    prompts = [[{"role": "system", "content": "s"}, {"role": "user", "content": "Q"}]] * 4
    assert f(prompts, [conv(s) for s in SOLUTIONS]) == pytest.approx([0.9, 0.2, 0.9, 0.9])
    assert scorer.calls[0][0] == ["Q"] * 4  # the problem is the prompt's user message
    (g,) = get_reward_funcs(["prm_bonus"], mode="cot", prm_bonus={"prm": StepScorer()})
    assert g(["Q", "Q"], SOLUTIONS[:2], answer=["6", " "]) == [pytest.approx(0.9), None]


class _PathScorer(StepScorer):
    """A PRM scorer class as a stage passes one in: built from a checkpoint path."""

    loaded: list = []

    def __init__(self, path: str) -> None:
        super().__init__()
        self.loaded.append(path)


def test_prm_bonus_loads_a_checkpoint_lazily() -> None:
    f = PRMBonus(prm="runs/nowhere/prm/latest", scorer_factory=_PathScorer)  # nothing is loaded until first use
    assert f.aggregation == "min" and f._scorer is None and _PathScorer.loaded == []
    assert isinstance(f.scorer, _PathScorer) and _PathScorer.loaded == ["runs/nowhere/prm/latest"]
    with pytest.raises(ValueError, match="scorer_factory"):  # rewards never import a stage to load a path
        PRMBonus(prm="runs/nowhere/prm/latest")
    with pytest.raises(ValueError, match="aggregation"):
        PRMBonus(prm=StepScorer(), aggregation="max")
    assert problem_text("plain prompt") == "plain prompt"


def _kimi_rank(rank: int, port: int, queue) -> None:
    import torch.distributed as dist  # deferred: heavy import

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        (f,) = get_reward_funcs(["kimi_length"], mode="cot")
        # one group of four completions split across the two processes, as TRL may split it
        lengths = [[10, 20], [30, 40]][rank]
        out = f(["A", "A"], ["#### 1", "#### 1"], answer=["1", "1"], completion_ids=[[0] * n for n in lengths])
        queue.put((rank, out))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_kimi_length_gathers_groups_across_processes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_kimi_rank, args=(rank, port, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    # lengths 10, 20, 30, 40 in one group: lambda = 0.5 - (len - 10) / 30
    assert results[0] == pytest.approx([0.5, 0.5 - 1 / 3])
    assert results[1] == pytest.approx([0.5 - 2 / 3, -0.5])


def test_reward_functions_pickle() -> None:
    # TRL's async GRPO sends reward functions to a child process

    funcs = get_reward_funcs(["cot_correctness", "brevity", "prm_bonus", "kimi_length"], mode="cot",
                             prm_bonus={"prm": "runs/nowhere/prm/latest"}, scorer_factory=_PathScorer)
    copies = pickle.loads(pickle.dumps(funcs))
    assert [f.__name__ for f in copies] == [f.__name__ for f in funcs]
    assert copies[0](["p"], ["#### 3"], answer=["3"]) == [1.0]
    assert copies[1](["p"], ["x"], completion_ids=[[0] * 5]) == pytest.approx([-0.001])
    assert copies[2]._prm == "runs/nowhere/prm/latest" and copies[2]._scorer is None
    assert copies[1].judge.memo is copies[3].judge.memo  # still shared after the trip
