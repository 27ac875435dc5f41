"""lighteval metrics for the mathforge tasks: executed PoT and lighteval's standard CoT metric.

Each sample of a response is *judged* once: a PoT sample by running its program in the sandbox
(``rewards.score_pot``, the whole task's batch in one call) and comparing the printed answer with
the gold; a CoT sample by lighteval's own GSM8K metric (``Metrics.expr_gold_metric``, math-verify
extraction), so CoT numbers compare with published lighteval ones. lighteval's extractive metric
is never applied to PoT: it reads numbers out of the text and would score unexecuted code as
correct. The judgments are stored in ``doc.specific["judgments"]`` (one dict per sample:
``correct``, ``answer``, ``status``, ``error_type``) where the runner and the details read them,
and every metric of a task reuses them instead of executing again.

Metrics (all batched, one value per document, averaged over the task):
``pass@1`` (the first sample: the greedy one in a greedy task), ``pass@k:n=N`` (the unbiased
estimator over N samples), ``maj@N`` (majority vote over the samples' answers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from lighteval.metrics.metrics_sample import SampleLevelComputation, SamplingMetric
from lighteval.metrics.utils.metric_utils import SampleLevelMetric
from lighteval.models.model_output import ModelResponse
from lighteval.tasks.requests import SamplingMethod

from eval.passk import majority_index, pass_at_k
from rewards import ExecMemo, score_pot

POT, COT = "pot", "cot"
MODES = (POT, COT)


def _texts(response: Any) -> list[str]:
    return list(response.final_text)


# the sandbox results of this evaluation's programs (``eval.gsm8k.evaluate`` clears it first): the repair
# loop's verifier runs the same greedy programs again, and finds them here
EXEC_MEMO = ExecMemo(keep_all=True)


def judge_pot(docs: Sequence[Any], responses: Sequence[Any]) -> None:
    """Execute every sample of every doc in one sandbox batch; store the judgments."""
    todo = [(d, r) for d, r in zip(docs, responses, strict=True) if not _judged(d, r)]
    if not todo:
        return
    flat = [(d, t) for d, r in todo for t in _texts(r)]
    scores = score_pot([t for _, t in flat], [d.specific["gold"] for d, _ in flat], memo=EXEC_MEMO)
    it = iter(scores)
    for d, r in todo:
        js = []
        for _ in _texts(r):
            s = next(it)
            js.append({"correct": bool(s.correct), "answer": s.answer, "status": s.status,
                       "error_type": s.error_type})
        d.specific["judgments"] = js
        d.specific["judged_texts"] = _texts(r)


class CotJudge:
    """lighteval's standard GSM8K metric (``Metrics.expr_gold_metric``) applied to each sample."""

    def __init__(self) -> None:
        from lighteval.metrics.metrics import Metrics  # deferred: heavy import

        self.metric = Metrics.expr_gold_metric.value.sample_level_fn
        # lighteval logs a warning per sample without an extractable answer; the judgments record
        # those (status "no_answer") and the runner reports their share
        logging.getLogger("lighteval.metrics.dynamic_metrics").setLevel(logging.ERROR)

    def __call__(self, docs: Sequence[Any], responses: Sequence[Any]) -> None:
        for d, r in zip(docs, responses, strict=True):
            if _judged(d, r):
                continue
            js = []
            for text in _texts(r):
                score = float(self.metric.compute(doc=d, model_response=ModelResponse(text=[text])))
                extracted = (d.specific or {}).get("extracted_predictions") or []
                js.append({"correct": score >= 1.0, "answer": extracted[0] if extracted else None,
                           "status": "ok" if extracted else "no_answer", "error_type": None})
            d.specific["judgments"] = js
            d.specific["judged_texts"] = _texts(r)


def _judged(doc: Any, response: Any) -> bool:
    spec = doc.specific or {}
    return spec.get("judged_texts") == _texts(response) and "judgments" in spec


# task name -> seconds spent judging its samples (sandbox runs or CoT extraction), this process
JUDGE_SECONDS: dict[str, float] = {}


def judge(mode: str, docs: Sequence[Any], responses: Sequence[Any]) -> list[list[dict]]:
    """Judge every sample (cached in the docs) and return the judgments, doc by doc."""
    t0 = time.perf_counter()
    if mode == POT:
        judge_pot(docs, responses)
    elif mode == COT:
        CotJudge()(docs, responses)
    else:
        raise ValueError(f"unknown eval mode {mode!r}; expected one of {MODES}")
    if docs:
        task = docs[0].task_name
        JUDGE_SECONDS[task] = JUDGE_SECONDS.get(task, 0.0) + time.perf_counter() - t0
    return [d.specific["judgments"] for d in docs]


class _Judged(SampleLevelComputation):
    """Base of the batched metrics: judge the batch, then reduce each doc's judgments."""
    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown eval mode {mode!r}; expected one of {MODES}")
        self.mode = mode

    def reduce(self, judgments: list[dict]) -> float:
        raise NotImplementedError

    def compute(self, responses: Sequence[Any], docs: Sequence[Any], **kwargs: Any) -> list[float]:
        return [self.reduce(js) for js in judge(self.mode, docs, responses)]


class FirstSampleCorrect(_Judged):
    """pass@1 of the first sample (the greedy completion in a greedy task)."""

    def reduce(self, judgments: list[dict]) -> float:
        return float(judgments[0]["correct"]) if judgments else 0.0


class PassAtKJudged(SamplingMetric, _Judged):
    """Unbiased pass@k over n samples (Chen et al., 2021)."""

    def __init__(self, mode: str, k: int, n: int) -> None:
        SamplingMetric.__init__(self)
        _Judged.__init__(self, mode)
        if not 1 <= k <= n:
            raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
        self.k, self.n = k, n

    def num_samples(self) -> int:
        return self.n

    def reduce(self, judgments: list[dict]) -> float:
        js = judgments[: self.n]
        return pass_at_k(len(js), sum(j["correct"] for j in js), self.k)


class MajAtKJudged(SamplingMetric, _Judged):
    """Majority vote over the answers of n samples: correct when the most frequent answer is."""

    def __init__(self, mode: str, n: int) -> None:
        SamplingMetric.__init__(self)
        _Judged.__init__(self, mode)
        self.n = n

    def num_samples(self) -> int:
        return self.n

    def reduce(self, judgments: list[dict]) -> float:
        js = judgments[: self.n]
        i = majority_index([j["answer"] for j in js])
        return float(js[i]["correct"]) if i is not None else 0.0


def _metric(name: str, fn: SampleLevelComputation) -> SampleLevelMetric:
    return SampleLevelMetric(metric_name=name, higher_is_better=True, category=SamplingMethod.GENERATIVE,
                             sample_level_fn=fn, corpus_level_fn=np.mean, batched_compute=True)


def sample_ks(n: int) -> list[int]:
    """The k reported for n samples: 1, 2, 4, ... below n, and n."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def greedy_metrics(mode: str) -> list[SampleLevelMetric]:
    return [_metric("pass@1", FirstSampleCorrect(mode))]


def sampling_metrics(mode: str, n: int) -> list[SampleLevelMetric]:
    if n < 2:
        raise ValueError(f"sampling metrics need n >= 2 samples, got {n}")
    metrics = [_metric(f"pass@{k}:n={n}", PassAtKJudged(mode, k, n)) for k in sample_ks(n)]
    return metrics + [_metric(f"maj@{n}", MajAtKJudged(mode, n))]
