"""lighteval custom tasks (lighteval 0.13): math word problems as executed Program-of-Thought and
as lighteval's standard GSM8K chain-of-thought.

- ``pot``: the PoT prompt of ``stages.common.pot`` (system message plus the chat template; the
  model wraps it, see ``eval.model``); the metric runs the program in the sandbox and compares its
  printed answer through ``rewards`` (``eval.metrics``).
- ``cot``: lighteval's own GSM8K prompt (``lighteval.tasks.tasks.gsm8k.gsm8k_prompt``,
  ``Question: ...\\nAnswer:``, few-shot from the train split, stop at ``Question:``, 256 tokens)
  and metric (``Metrics.expr_gold_metric``), for comparison with published lighteval numbers.

Any Problem source of ``stages.common.data.load_problems`` can be a task's data: ``gsm8k:test``
(the ../shared copy, or ``openai/gsm8k`` from the hub when there is none), ``arith:test:500`` (the
embedded arithmetic split), a jsonl, a jsonl with a field mapping (``svamp.jsonl?question={Body}
{Question}&answer=Answer``). Problems whose gold answer cannot be read are left out and counted
(:func:`gradable_problems`). Datasets are built locally through ``eval.offline``'s
registry of pseudo hub repositories, never downloaded by lighteval.

``TASKS_TABLE`` holds the default tasks (``gsm8k_pot``, ``gsm8k_cot``, ``arith_pot``) for
``--custom-tasks eval/tasks.py``; the runner (``python -m eval.gsm8k``) builds its own module per
run with :func:`tasks_module` (the recipe's eval sets, token budgets and sample counts).
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc

from eval.metrics import COT, MODES, POT, greedy_metrics, sampling_metrics
from eval.offline import LOCAL_DATASETS
from rewards.scoring import readable_gold, warn_unreadable_golds
from stages.common.data import gsm8k_gold, load_problems

GSM8K_REPO = "openai/gsm8k"
COT_STOP = ("Question:",)  # lighteval's gsm8k task stops there
DEFAULT_MAX_NEW_TOKENS = 256  # lighteval's gsm8k generation_size


@dataclass(frozen=True)
class TaskSpec:
    """One lighteval task of a run: a problem source in one mode, greedy or with n samples."""

    source: str
    mode: str = POT
    samples: int = 1
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    num_fewshot: int = 0
    limit: int | None = None  # the first `limit` problems of the source

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"task mode must be one of {MODES}, got {self.mode!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.mode == POT and self.num_fewshot:
            raise ValueError("few-shot examples are a CoT option; the PoT prompt is fixed by stages.common.pot")

    @property
    def name(self) -> str:
        suffix = (f"_l{self.limit}" if self.limit else "") + (f"_n{self.samples}" if self.samples > 1 else "")
        return f"{self.mode}_{slug(self.source)}{suffix}"

    @property
    def full_name(self) -> str:
        """The name lighteval gives the task's results and details: ``name|fewshot``."""
        return f"{self.name}|{self.num_fewshot}"


def slug(source: str) -> str:
    """A task-name-safe form of a problem source (``gsm8k:test:50`` -> ``gsm8k_test_50``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", source).strip("_").lower() or "data"


# ---------------------------------------------------------------------------------------------
# Data


@lru_cache(maxsize=16)
def problems_of(source: str) -> tuple[dict, ...]:
    """The Problem rows of a source (cached per process; sources are deterministic)."""
    return tuple(load_problems(source))


@lru_cache(maxsize=16)
def gradable_problems(source: str, limit: int | None = None) -> tuple[tuple[dict, ...], int]:
    """The first ``limit`` problems of a source whose gold answer can be read
    (``rewards.equivalence.read_gold``), and how many of them could not: those are left out of
    the task (never scored 0), counted in the results and warned about once per source."""
    problems = problems_of(source)[:limit]
    unreadable = warn_unreadable_golds([p["answer"] for p in problems], source)
    return tuple(p for p in problems if readable_gold(p["answer"]) is not None), unreadable


def _rows(problems: Any) -> list[dict]:
    # "answer" holds the worked solution when there is one (lighteval's gsm8k prompt puts it in the
    # gold choice and few-shot examples), "gold" the final answer that PoT compares with.
    return [{"id": p["id"], "question": p["question"], "answer": p.get("solution") or p["answer"],
             "gold": p["answer"], "index": i} for i, p in enumerate(problems)]


def build_dataset(source: str, with_train: bool = True, limit: int | None = None) -> Any:
    """The DatasetDict lighteval reads: ``test`` is the source (its first ``limit`` problems, less
    those whose gold cannot be read), ``train`` GSM8K's train split (the CoT few-shot pool)."""
    from datasets import Dataset, DatasetDict  # deferred: heavy import

    splits = {"test": Dataset.from_list(_rows(gradable_problems(source, limit)[0]))}
    if with_train:
        splits["train"] = Dataset.from_list(_rows(problems_of("gsm8k:train")))
    return DatasetDict(splits)


def dataset_repo(source: str, with_train: bool, limit: int | None = None) -> str:
    """Register the source's builder under a pseudo hub repository; return its name."""
    repo = f"mathforge/{slug(source)}{f'-l{limit}' if limit else ''}{'+train' if with_train else ''}"
    LOCAL_DATASETS[repo] = lambda: build_dataset(source, with_train, limit)
    return repo


LOCAL_DATASETS[GSM8K_REPO] = lambda: build_dataset("gsm8k:test", True)


# ---------------------------------------------------------------------------------------------
# Prompt functions (dataset row -> lighteval Doc)


def _gold(line: dict) -> str:
    if line.get("gold"):
        return str(line["gold"])

    return gsm8k_gold(line["answer"])


def _specific(line: dict, mode: str) -> dict:
    index = line.get("index", line.get("__index"))
    return {"mode": mode, "id": line.get("id") or f"row-{index}", "index": index,
            "question": line["question"], "gold": _gold(line)}


def pot_prompt(line: dict, task_name: str | None = None) -> Doc:
    """A PoT doc: the question; the model builds the PoT chat prompt from ``specific``."""
    return Doc(task_name=task_name or "", query=line["question"], choices=[_gold(line)], gold_index=0,
               specific=_specific(line, POT))


def cot_prompt(line: dict, task_name: str | None = None) -> Doc:
    """lighteval's standard GSM8K prompt, with the ids eval needs in ``specific``."""
    from lighteval.tasks.tasks.gsm8k import gsm8k_prompt  # deferred: heavy import

    doc = gsm8k_prompt({"question": line["question"], "answer": line["answer"]}, task_name)
    doc.specific = _specific(line, COT)
    return doc


# ---------------------------------------------------------------------------------------------
# Task configs


def task_config(spec: TaskSpec, repo: str | None = None, name: str | None = None) -> LightevalTaskConfig:
    """The lighteval task of a :class:`TaskSpec` (named ``spec.name`` unless ``name`` is given)."""
    with_train = spec.mode == COT and spec.num_fewshot > 0
    metrics = greedy_metrics(spec.mode) if spec.samples == 1 else sampling_metrics(spec.mode, spec.samples)
    return LightevalTaskConfig(
        name=name or spec.name,
        prompt_function=pot_prompt if spec.mode == POT else cot_prompt,
        hf_repo=repo or dataset_repo(spec.source, with_train, spec.limit),
        hf_subset="main",
        hf_avail_splits=["train", "test"],
        evaluation_splits=["test"],
        few_shots_split="train",
        few_shots_select="random_sampling_from_train",
        generation_size=spec.max_new_tokens,
        stop_sequence=list(COT_STOP) if spec.mode == COT else [],
        metrics=metrics,
        version=0,
    )


def tasks_module(specs: list[TaskSpec], name: str = "mathforge_eval_tasks") -> types.ModuleType:
    """A custom-tasks module (what lighteval's ``custom_tasks`` takes) holding ``specs``."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate eval tasks: {names}")
    module = types.ModuleType(name)
    module.TASKS_TABLE = [task_config(s) for s in specs]
    return module


gsm8k_pot = task_config(TaskSpec("gsm8k:test", POT), repo=GSM8K_REPO, name="gsm8k_pot")
gsm8k_cot = task_config(TaskSpec("gsm8k:test", COT), repo=GSM8K_REPO, name="gsm8k_cot")
arith_pot = task_config(TaskSpec("arith:test:500", POT), name="arith_pot")

TASKS_TABLE = [gsm8k_pot, gsm8k_cot, arith_pot]
