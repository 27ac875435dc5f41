"""PRM step labels: MC rollouts (through the real sandbox), judge, HE/SE, importers, mining."""

from __future__ import annotations

import json

import pytest

from stages.common.data import DataFormatError
from stages.prm_lib import labels


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def test_mc_labels_hard_and_soft_from_sandboxed_rollouts():
    steps = ["a = 3", "b = a * 4", "print(b)"]
    items = [labels.MCItem("q", "12", steps, True), labels.MCItem("q2", "5", ["x = 2", "print(x)"], False)]
    seen = []

    def rollout(questions, prefixes, k):
        seen.extend(prefixes)
        out = []
        for p in prefixes:
            if p.endswith("a = 3\n"):  # 1 of 2 continuations right
                out.append(["b = a * 4\nprint(b)\n```", "print(a)\n```"])
            elif p.endswith("b = a * 4\n"):  # both right
                out.append(["print(b)\n```", "print(a * 4)\n```"])
            else:  # x = 2: nothing recovers 5
                out.append(["print(x)\n```", "print(x + 1)\n```"])
        return out

    rows = labels.mc_labels(rollout, items, k=2)
    assert seen == ["```python\na = 3\n", "```python\na = 3\nb = a * 4\n", "```python\nx = 2\n"]
    assert rows[0]["soft_labels"] == [0.5, 1.0, 1.0]
    assert rows[0]["labels"] == [True, True, True]
    assert rows[1]["soft_labels"] == [0.0, 0.0]
    assert rows[1]["labels"] == [False, False]
    assert rows[0]["completions"] == steps


def test_mc_skip_correct_rolls_out_only_wrong_solutions():
    items = [labels.MCItem("q", "12", ["a = 3", "b = a * 4", "print(b)"], True),
             labels.MCItem("q2", "5", ["x = 2", "y = x", "print(y)"], False)]
    seen = []

    def rollout(questions, prefixes, k):
        seen.extend(zip(questions, prefixes, strict=True))
        return [["print(x + 3)\n```" if p.endswith("x = 2\n") else "print(1)\n```"] * k for p in prefixes]

    rows = labels.mc_labels(rollout, items, k=2, skip_correct=True)
    assert [q for q, _ in seen] == ["q2", "q2"]  # the correct solution costs no rollout
    assert rows[0]["labels"] == [True, True, True] and rows[0]["soft_labels"] == [1.0, 1.0, 1.0]
    assert rows[1]["labels"] == [True, False, False] and rows[1]["soft_labels"] == [1.0, 0.0, 0.0]


def test_mined_solutions_caps_correct_per_wrong():
    from stages.prm_lib.labelling import mined_solutions

    samples = []
    for pid, n_right in (("a", 8), ("b", 6), ("c", 7)):
        for j in range(8):
            samples.append({"id": pid, "completion": f"x = {pid}{j}\nprint(x)", "correct": j < n_right})
    chosen, stats = mined_solutions(samples, low=0.3, high=0.8, limit=100, max_correct_per_wrong=1.5)
    wrong = [s for s in chosen if not s["correct"]]
    assert len(wrong) == 3 and len(chosen) - len(wrong) == 4  # int(1.5 * 3) correct ones
    assert stats["wrong_samples"] == 3 and stats["samples"] == 24
    assert chosen[0]["id"] == "b"  # mining order kept: b (6/8 = 0.75) is in the range
    small, _ = mined_solutions(samples, low=0.3, high=0.8, limit=5, max_correct_per_wrong=1.5)
    assert len(small) == 5 and sum(not s["correct"] for s in small) == 2  # ceil(5 / 2.5) wrong
    plain, _ = mined_solutions(samples, low=0.3, high=0.8, limit=100)
    assert len(plain) == 24


def test_he_and_se_transforms():
    assert labels.he_rewards([True, False, True], True) == [1.0, -1.0, 1.0]
    assert labels.he_rewards([True, True], False) == [-1.0, -1.0]
    se = labels.se_rewards([True, False, True, True])
    assert se == pytest.approx([0.625, -0.75, 0.875, 1.0])
    assert labels.rewards_to_labels([-1.0, 0.0, 1.0]) == [0.0, 0.5, 1.0]


def test_mistake_mining_prefers_mid_solve_rates():
    rates = labels.solve_rates(["a"] * 4 + ["b"] * 4 + ["c"] * 4,
                          [True] * 4 + [True, False, True, False] + [False] * 4)
    assert rates == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert labels.mine_mistakes(rates, 0.3, 0.8) == ["b", "a", "c"]


def test_parse_verdicts():
    assert labels.parse_verdicts("Step 1: correct\nStep 2: incorrect\nStep 3: Correct", 3) == [True, False, True]
    assert labels.parse_verdicts("Step 1: correct", 2) is None


class _Judge:
    """A ChatModel that judges program steps by running them: a step that raises is wrong."""

    name = "test-judge"

    def __init__(self):
        from stages.common.chat import Usage

        self.usage = Usage()
        self.calls = 0

    def complete(self, requests, on_response=None):
        from stages.common.chat import ChatResponse

        out = []
        for req in requests:
            self.calls += 1
            body = req.messages[-1][1]
            steps = body.split("Solution steps:\n", 1)[1].split("\n\n")
            verdicts = ["incorrect" if "/ 0" in s else "correct" for s in steps]
            text = "\n".join(f"Step {i + 1}: {v}" for i, v in enumerate(verdicts))
            resp = ChatResponse(req, [text] * req.n)
            if on_response:
                on_response(resp)
            out.append(resp)
        return out


def test_judge_labels_through_the_response_cache(tmp_path):
    from stages.common.chat import ResponseCache

    judge = _Judge()
    cache = ResponseCache(tmp_path / "cache.jsonl")
    items = [("p1", "q", ["a = 1", "b = a / 0", "print(b)"]), ("p2", "q", ["print(1)"])]
    assert labels.judge_labels(judge, cache, items) == [[True, False, True], [True]]
    assert judge.calls == 2
    again = labels.judge_labels(judge, ResponseCache(tmp_path / "cache.jsonl"), items)
    assert again == [[True, False, True], [True]] and judge.calls == 2  # nothing paid twice


def _prm800k_row(ratings):
    return {"question": {"problem": "What is 1+1?"},
            "label": {"steps": [{"completions": [{"text": f"s{i}", "rating": r}], "chosen_completion": None}
                                for i, r in enumerate(ratings)]}}


def test_import_prm800k_three_classes_and_binarised(tmp_path):
    path = _write(tmp_path / "p.jsonl", [_prm800k_row([1, 0, -1])])
    assert next(iter(labels.import_prm800k(path, "three")))["labels"] == ["positive", "neutral", "negative"]
    assert next(iter(labels.import_prm800k(path, "neutral_positive")))["labels"] == [True, True, False]
    assert next(iter(labels.import_prm800k(path, "neutral_negative")))["labels"] == [True, False, False]
    bad = _write(tmp_path / "bad.jsonl", [_prm800k_row([1]), _prm800k_row([2])])
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: field 'label.steps\[0\].rating'"):
        list(labels.import_prm800k(bad, "three"))


def test_import_math_shepherd(tmp_path):
    inp = "Tom has 3 apples and buys 2. Step 1: 3 + 2 = 5 ки\nStep 2: The answer is 6 ки"
    lab = "Tom has 3 apples and buys 2. Step 1: 3 + 2 = 5 +\nStep 2: The answer is 6 -"
    rows = list(labels.import_math_shepherd(_write(tmp_path / "m.jsonl", [{"input": inp, "label": lab},
                                                                     {"input": inp, "value": ["-", "+"]}])))
    assert rows[0]["prompt"] == "Tom has 3 apples and buys 2."
    assert rows[0]["completions"] == ["Step 1: 3 + 2 = 5", "Step 2: The answer is 6"]
    assert rows[0]["labels"] == [True, False]
    assert rows[1]["labels"] == [False, True]


def test_import_pi_scores_and_text_label(tmp_path):
    pi = _write(tmp_path / "pi.jsonl", [{"question": "q", "steps": ["a", "b", "c"], "pi": [0.9, 0.8, 0.7],
                                         "meta_label": 1},
                                        {"question": "q2", "steps": ["a"], "pi": [1.3], "meta_label": -1}])
    rows = list(labels.import_pi_scores(pi))
    assert rows[0]["labels"] == [0.9, 0.0, 0.0]
    assert rows[1]["labels"] == [1.0]
    tl = _write(tmp_path / "tl.jsonl", [{"prompt": "q", "text": "s1", "label": "good"},
                                        {"prompt": "q", "text": "s2", "label": "bad"},
                                        {"prompt": "r", "text": "t1", "label": "ok"}])
    rows = list(labels.import_text_label(tl, {"good": True, "bad": False, "ok": "neutral"}))
    assert [(r["prompt"], r["completions"], r["labels"]) for r in rows] == [
        ("q", ["s1", "s2"], [True, False]), ("r", ["t1"], ["neutral"])]
    with pytest.raises(DataFormatError, match="tl.jsonl:3: field 'label'"):
        list(labels.import_text_label(tl, {"good": True, "bad": False}))
