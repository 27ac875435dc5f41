"""eval.metrics through lighteval's own metric application: executed PoT and the standard CoT
metric, on GSM8K's gold solutions and on the four labelled model-solution sets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lighteval.metrics import apply_metric
from lighteval.models.model_output import ModelResponse

from eval.metrics import COT, POT, greedy_metrics, sampling_metrics
from eval.tasks import _rows, cot_prompt, pot_prompt, problems_of
from stages.common.pot import format_completion

GSM8K_DIR = Path(os.environ.get("MATHFORGE_GSM8K_DIR")
                 or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k")
MODEL_SETS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def _score(mode: str, rows: list[dict], texts: list[list[str]], metrics=None) -> list[dict]:
    prompt = pot_prompt if mode == POT else cot_prompt
    docs = [prompt(r, "t") for r in rows]
    responses = [ModelResponse(text=t) for t in texts]
    return apply_metric(responses=responses, docs=docs, metrics=metrics or greedy_metrics(mode)), docs


def test_pot_metric_executes_programs():
    rows = _rows(problems_of("arith:test:12"))
    programs = [format_completion(p["program"]) for p in problems_of("arith:test:12")]
    out, docs = _score(POT, rows, [[c] for c in programs])
    assert [o["pass@1"] for o in out] == [1.0] * len(rows)
    assert all(d.specific["judgments"][0]["status"] == "ok" for d in docs)

    gold = rows[0]["gold"]
    wrong_print = format_completion(f"print({int(gold) + 1})")
    # the right number written in the text or in code that does not print it is not a solution:
    # lighteval's extractive metric would read the number; the PoT metric runs the program
    unexecuted = f"The answer is {gold}.\n```python\nanswer = {gold}\n```"
    no_code = f"The answer is {gold}."
    crashing = format_completion(f"assert 1 == 2\nprint({gold})")
    out, docs = _score(POT, [rows[0]] * 4, [[wrong_print], [unexecuted], [no_code], [crashing]])
    assert [o["pass@1"] for o in out] == [0.0, 0.0, 0.0, 0.0]
    statuses = [d.specific["judgments"][0]["status"] for d in docs]
    assert statuses[0] == "ok" and statuses[2] == "no_code" and statuses[3] not in ("ok", "no_code")


def test_sampling_metrics_share_one_execution():
    rows = _rows(problems_of("arith:test:3"))
    right = [format_completion(p["program"]) for p in problems_of("arith:test:3")]
    wrong = format_completion("print(-1)")
    texts = [[wrong, right[0], wrong, wrong], [wrong] * 4, [right[2], right[2], wrong, wrong]]
    metrics = sampling_metrics(POT, 4)
    assert [m.metric_name for m in metrics] == ["pass@1:n=4", "pass@2:n=4", "pass@4:n=4", "maj@4"]
    out, docs = _score(POT, rows, texts, metrics)
    assert [o["pass@1:n=4"] for o in out] == pytest.approx([0.25, 0.0, 0.5])
    assert [o["pass@4:n=4"] for o in out] == pytest.approx([1.0, 0.0, 1.0])
    assert [o["pass@2:n=4"] for o in out] == pytest.approx([0.5, 0.0, 1 - 1 / 6])
    # maj@4: "-1" wins 3-1 on the first; a 2-2 tie goes to the first answer seen on the third
    assert [o["maj@4"] for o in out] == [0.0, 0.0, 1.0]
    assert all(len(d.specific["judgments"]) == 4 for d in docs)


@pytest.mark.slow
def test_cot_metric_gold_solutions_score_100():
    rows = _rows(problems_of("gsm8k:test"))
    out, _ = _score(COT, rows, [[r["answer"]] for r in rows])
    assert len(out) == 1319
    assert sum(o["pass@1"] for o in out) == len(out)


@pytest.mark.slow
def test_cot_metric_reproduces_labelled_accuracies():
    rows = _rows(problems_of("gsm8k:test"))
    with (GSM8K_DIR / "example_model_solutions.jsonl").open() as fh:
        examples = [json.loads(line) for line in fh]
    assert [e["question"] for e in examples] == [r["question"] for r in rows]
    for name in MODEL_SETS:
        out, _ = _score(COT, rows, [[e[name]["solution"]] for e in examples])
        measured = 100 * sum(o["pass@1"] for o in out) / len(out)
        labelled = 100 * sum(e[name]["is_correct"] for e in examples) / len(examples)
        assert abs(measured - labelled) <= 0.2, f"{name}: measured {measured:.2f}% vs labelled {labelled:.2f}%"
