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
    chosen, stats = mined_solutions(samples, low=0.2, high=0.7, mode="order", limit=100, max_correct_per_wrong=1.5)
    wrong = [s for s in chosen if not s["correct"]]
    assert len(wrong) == 3 and len(chosen) - len(wrong) == 4  # int(1.5 * 3) correct ones
    assert stats["wrong_samples"] == 3 and stats["samples"] == 24
    assert chosen[0]["id"] == "b"  # mining order kept: b (fails 2/8 = 0.25) is in the range
    small, _ = mined_solutions(samples, low=0.2, high=0.7, mode="order", limit=5, max_correct_per_wrong=1.5)
    assert len(small) == 5 and sum(not s["correct"] for s in small) == 2  # ceil(5 / 2.5) wrong
    plain, _ = mined_solutions(samples, low=0.2, high=0.7, mode="order", limit=100)
    assert len(plain) == 24


def test_mistake_mining_keeps_fail_rates_between_30_and_80_percent_and_drops_the_rest():
    # generate-and-score: 5 solutions per problem; keep the problems failed 30% to 80% of the time
    correct = {"never_fails": [True] * 5, "fails_1_of_5": [True] * 4 + [False], "fails_2_of_5": [True] * 3 + [False] * 2,
               "fails_4_of_5": [True] + [False] * 4, "always_fails": [False] * 5}
    ids = [pid for pid, flags in correct.items() for _ in flags]
    fail = labels.fail_rates(ids, [f for flags in correct.values() for f in flags])
    assert fail == {"never_fails": 0.0, "fails_1_of_5": 0.2, "fails_2_of_5": 0.4, "fails_4_of_5": 0.8,
                    "always_fails": 1.0}
    assert labels.mine_mistakes(fail, 0.3, 0.8) == ["fails_2_of_5", "fails_4_of_5"]  # mode filter: the default
    assert labels.mine_mistakes(fail, 0.3, 0.8, limit=1) == ["fails_2_of_5"]
    assert labels.mine_mistakes(fail, 0.3, 0.8, mode="order") == ["fails_2_of_5", "fails_4_of_5", "fails_1_of_5",
                                                             "always_fails", "never_fails"]
    assert labels.mine_mistakes(fail, 0.3, 0.8, mode="none") == list(correct)
    from stages.prm_lib.labelling import mined_solutions

    samples = [{"id": pid, "completion": f"x = {k}\nprint(x)", "correct": ok}
               for pid, flags in correct.items() for k, ok in enumerate(flags)]
    chosen, stats = mined_solutions(samples, low=0.3, high=0.8, limit=None)
    assert {s["id"] for s in chosen} == {"fails_2_of_5", "fails_4_of_5"} and len(chosen) == 10
    assert stats["problems_kept"] == 2 and stats["problems"] == 5 and stats["mining"] == "filter"


def test_he_and_se_transforms():
    assert labels.he_rewards([True, False, True], True) == [1.0, -1.0, 1.0]
    assert labels.he_rewards([True, True], False) == [-1.0, -1.0]
    se = labels.se_rewards([True, False, True, True])
    assert se == pytest.approx([0.625, -0.75, 0.875, 1.0])
    assert labels.rewards_to_labels([-1.0, 0.0, 1.0]) == [0.0, 0.5, 1.0]


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
    rows = list(labels.import_math_shepherd(_write(tmp_path / "m.jsonl", [{"input": inp, "label": lab}])))
    assert rows[0]["prompt"] == "Tom has 3 apples and buys 2."
    assert rows[0]["completions"] == ["Step 1: 3 + 2 = 5", "Step 2: The answer is 6"]
    assert rows[0]["labels"] == [True, False]
    # ProcessRewardTrainer rows given to the wrong importer: the error says which one reads them
    wrong = _write(tmp_path / "w.jsonl", [{"input": "q", "value": ["a", "b"], "label": ["+", "-"]}])
    with pytest.raises(DataFormatError, match="w.jsonl:1: field 'label'.*input_value_label"):
        list(labels.import_math_shepherd(wrong))


# ProcessRewardTrainer's own example (its README), verbatim
PRT_EXAMPLE = [
    {
        "input": "Calculate the volume of a cylinder with radius 3 units and height 5 units.",
        "value": [
            "To find the volume of a cylinder, we can use the formula:\n\\[V = \\pi r^2 h\\]\nwhere $r$ is the radius and $h$ is the height.",
            "We are given that the radius $r = 3$ units and the height $h = 5$ units.",
            "Let's substitute these values into the formula:\n\\[V = \\pi (3)^2 (5)\\]",
            "First calculate the square of the radius:\n\\[V = \\pi (9) (5)\\]",
            "Multiply all the numbers:\n\\[V = \\pi (45)\\]",
            "Using $\\pi \\approx 3.14159$:\n\\[V \\approx 141.37\\]",
            "Therefore, the volume of the cylinder is $\\boxed{141.37}$ cubic units.",
        ],
        "label": ["+", "+", "+", "+", "+", "+", "+"],
    },
    {
        "input": "Find the derivative of f(x) = x^2 + 3x + 1",
        "value": [
            "To find the derivative, we'll use the power rule and the constant rule.",
            "For x^2, the derivative is 2x^1, so that gives us 2x",
            "For 3x, we multiply by the exponent which is 0, so the derivative is 0",
            "The derivative of a constant (1) is always 0",
            "Therefore, f'(x) = 2x + 0 + 0 = 2x"
        ],
        "label": ["+", "+", "-", "+", "-"]
    }
]


def test_import_input_value_label_reads_process_reward_trainers_example(tmp_path):
    from stages.prm_lib.labelling import imported_rows

    path = _write(tmp_path / "prt.jsonl", PRT_EXAMPLE)
    rows = imported_rows([path], "input_value_label", prm800k_mode="neutral_positive", label_map=None)
    assert [r["prompt"] for r in rows] == [PRT_EXAMPLE[0]["input"], PRT_EXAMPLE[1]["input"]]
    assert rows[0]["completions"] == PRT_EXAMPLE[0]["value"] and rows[0]["labels"] == [True] * 7
    assert rows[1]["completions"] == PRT_EXAMPLE[1]["value"]
    assert rows[1]["labels"] == [True, True, False, True, False]
    bad = _write(tmp_path / "bad.jsonl", [PRT_EXAMPLE[1], {**PRT_EXAMPLE[1], "label": ["+", "-"]}])
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: field 'label' expected one '\+' or '-' per step \(5\)"):
        list(labels.import_input_value_label(bad))


# DreamPRM's data format example (its README), verbatim
DREAMPRM_EXAMPLE = {
    "cot_response": "### Step 1: Analyze the problem...\n### Step 2: Apply theorem...",
    "cot_steps": [
        {"pi": 0.8},
        {"pi": 0.9},
        {"pi": 0.7},
        {"pi": 0.85}
    ],
    "meta_label": 1.0,
    "informal_prefix": "Prove that...",
    "formal_statement": "∀ x ∈ ℝ, ..."
}


def test_import_dreamprm_keeps_each_steps_pi_and_the_outcome_meta_label(tmp_path):
    four = {**DREAMPRM_EXAMPLE, "cot_response": "### Step 1: Analyze the problem...\n### Step 2: Apply theorem...\n"
            "### Step 3: Simplify.\n### Step 4: Conclude."}
    path = _write(tmp_path / "dream.jsonl", [four, {**four, "meta_label": 0.0}])
    rows = list(labels.import_dreamprm(path))
    assert rows[0]["completions"] == ["Analyze the problem...", "Apply theorem...", "Simplify.", "Conclude."]
    # meta_label 1.0 is the whole solution's outcome, not the index of a first wrong step
    assert rows[0]["labels"] == [0.8, 0.9, 0.7, 0.85] and rows[0]["meta_label"] == 1.0
    assert rows[1]["labels"] == [0.8, 0.9, 0.7, 0.85] and rows[1]["meta_label"] == 0.0
    assert rows[0]["prompt"] == "Prove that...\n∀ x ∈ ℝ, ..."
    # the quoted example itself has two step markers for four pi scores: refused, naming the field
    quoted = _write(tmp_path / "quoted.jsonl", [DREAMPRM_EXAMPLE])
    with pytest.raises(DataFormatError, match="quoted.jsonl:1: field 'cot_steps' has 4 scores for 2 steps"):
        list(labels.import_dreamprm(quoted))
    # the flat form (pi_scores) reads meta_label the same way; pi is clipped to [0, 1]
    flat = _write(tmp_path / "pi.jsonl", [{"question": "q", "steps": ["a", "b", "c"], "pi": [0.9, 0.8, 1.3],
                                           "meta_label": 1}])
    assert next(iter(labels.IMPORTERS["pi_scores"](flat)))["labels"] == [0.9, 0.8, 1.0]
    bad = _write(tmp_path / "bad.jsonl", [{**four, "meta_label": 3}])
    with pytest.raises(DataFormatError, match="bad.jsonl:1: field 'meta_label'"):
        list(labels.import_dreamprm(bad))


def test_import_text_label(tmp_path):
    tl = _write(tmp_path / "tl.jsonl", [{"prompt": "q", "text": "s1", "label": "good"},
                                        {"prompt": "q", "text": "s2", "label": "bad"},
                                        {"prompt": "r", "text": "t1", "label": "ok"}])
    rows = list(labels.import_text_label(tl, {"good": True, "bad": False, "ok": "neutral"}))
    assert [(r["prompt"], r["completions"], r["labels"]) for r in rows] == [
        ("q", ["s1", "s2"], [True, False]), ("r", ["t1"], ["neutral"])]
    with pytest.raises(DataFormatError, match="tl.jsonl:3: field 'label'"):
        list(labels.import_text_label(tl, {"good": True, "bad": False}))
