"""The quantity-grounding check of the revision loop's verifier (stages.revise_lib.grounding): a
number the problem gives that the program never uses, a number the program writes that the problem
does not give, where the loop revises from, and the option that turns it on (off: unchanged)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stages.common.pot import format_completion
from stages.common.steps import split_program
from stages.revise_lib import repair as loop
from stages.revise_lib.grounding import check_grounding, implied_numbers, question_numbers, step_numbers
from stages.revise_lib.repair import RepairOptions, Verifier, flag_step

QUESTION = ("Zoe has $26. Zoe buys 3 eggs at $1 each. She pays for a lamp for $11. She earns $8 washing the car. "
            "How many dollars does Zoe have left?")
RIGHT = ("money = 26\neggs = 3\nprice = 1\ncost = eggs * price\nmoney = money - cost\nlamp = 11\n"
         "money = money - lamp\nearned = 8\nmoney = money + earned\nprint(money)")


class WordTokenizer:
    """One token per whitespace-separated word; a plain-text chat template."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + "<assistant>\n"

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}


def test_question_numbers_in_order_with_separators_and_decimals():
    assert question_numbers("Pay $1,200 for 3 tickets at 2.50 each, row x2.") == [1200.0, 3.0, 2.5]
    assert question_numbers("No numbers here.") == []
    assert implied_numbers("Twice a dozen eggs, half of them, 10%") >= {2.0, 12.0, 0.5, 100.0}
    assert step_numbers("x = -5 * 2.5\n# 7 in a comment") == [5.0, 2.5]
    assert step_numbers("x = (") is None


def test_a_grounded_program_passes():
    assert check_grounding(QUESTION, split_program(RIGHT)) is None
    # the remainder test of an assert writes 0, which no problem gives
    assert check_grounding("Share 12 apples among 4 friends.",
                           split_program("a = 12\nf = 4\nassert a % f == 0\nprint(a // f)")) is None
    # a quantity in words
    assert check_grounding("Tom has 5 pens and buys twice as many.", split_program("p = 5\nprint(p + 2 * p)")) is None


def test_an_unused_number_is_flagged_where_the_missing_step_belongs():
    skipped = RIGHT.replace("lamp = 11\nmoney = money - lamp\n", "")
    steps = split_program(skipped)
    step, reason = check_grounding(QUESTION, steps)
    assert reason == "the problem's 11 is not used by the program"
    assert steps[step] == "earned = 8"  # the first step using a number the problem gives after the 11
    # the last number skipped: flagged at the last step
    last = split_program(RIGHT.replace("earned = 8\nmoney = money + earned\n", ""))
    assert check_grounding(QUESTION, last) == (len(last) - 1, "the problem's 8 is not used by the program")


def test_a_number_the_problem_does_not_give_is_flagged_at_its_step():
    miscopied = RIGHT.replace("lamp = 11", "lamp = 111")
    steps = split_program(miscopied)
    step, reason = check_grounding(QUESTION, steps)
    # the stray 111 (step 6) comes before the step where the unused 11 belongs (step 8)
    assert (step, reason) == (5, "step 6 uses 111, which is not a number in the problem")


def test_the_option_adds_the_check_to_the_verifier_and_its_flag():
    tokenizer = WordTokenizer()
    skipped = format_completion(RIGHT.replace("lamp = 11\nmoney = money - lamp\n", ""))
    (plain,) = Verifier(tokenizer).verify([QUESTION], [skipped])
    assert plain.grounding is None and flag_step(plain, None) is None  # runs, prints: the sandbox passes it
    (checked,) = Verifier(tokenizer, grounding=True).verify([QUESTION], [skipped])
    flag = flag_step(checked, None)
    assert flag.kind == "ungrounded" and flag.reason == "The problem's 11 is not used by the program"
    assert checked.summary()["grounding"] == "the problem's 11 is not used by the program"
    assert Verifier(tokenizer, grounding=True).signal == "sandbox+grounding"


@pytest.mark.parametrize("grounding", [False, True])
def test_the_loop_revises_a_skipped_number_only_with_the_check(monkeypatch, grounding):
    seen = []

    def fake_generate(model, tokenizer, prompts, *, num_return_sequences=1, **kw):
        seen.extend(prompts)
        return [["lamp = 11\nmoney = money - lamp\nearned = 8\nmoney = money + earned\nprint(money)\n```"]
                for _ in prompts]

    monkeypatch.setattr(loop, "generate", fake_generate)
    skipped = format_completion(RIGHT.replace("lamp = 11\nmoney = money - lamp\n", ""))
    (record,) = loop.repair(SimpleNamespace(model=None, tokenizer=WordTokenizer()),
                            [{"id": "z", "question": QUESTION, "completion": skipped}],
                            RepairOptions(rounds=2, threshold=None, grounding=grounding))
    if not grounding:
        assert record["attempted"] is False and seen == []
        return
    assert record["attempted"] and record["flag"]["kind"] == "ungrounded" and record["stop"] == "verified"
    # the steps before the flagged one are kept; the revision prints the gold 20
    assert seen[0].endswith("```python\nmoney = 26\neggs = 3\nprice = 1\ncost = eggs * price\nmoney = money - cost\n")
    assert record["final_check"]["answer"] == "20" and record["final_check"]["grounding"] is None


def test_restart_after_rewrites_the_whole_program_in_later_rounds(monkeypatch):
    skipped_tail = "earned = 8\nmoney = money + earned\nprint(money)\n```"
    prompts = []

    def fake_generate(model, tokenizer, batch, *, num_return_sequences=1, **kw):
        prompts.extend(batch)
        # from the kept steps the policy repeats its slip; from the start it writes the whole program
        return [[RIGHT + "\n```" if p.endswith("<assistant>\n```python\n") else skipped_tail] for p in batch]

    monkeypatch.setattr(loop, "generate", fake_generate)
    skipped = format_completion(RIGHT.replace("lamp = 11\nmoney = money - lamp\n", ""))
    item = {"id": "z", "question": QUESTION, "completion": skipped}
    policy = SimpleNamespace(model=None, tokenizer=WordTokenizer())
    # without restart_after: every round from the flagged step, the slip repeats and the item stops
    (stuck,) = loop.repair(policy, [item], RepairOptions(rounds=3, threshold=None, grounding=True))
    assert stuck["stop"] == "repeat" and [e["kept_steps"] for e in stuck["rounds"]] == [5]
    assert stuck["final_check"]["answer"] == "31"
    prompts.clear()
    (record,) = loop.repair(policy, [item], RepairOptions(rounds=3, threshold=None, grounding=True, restart_after=1))
    assert [e["kept_steps"] for e in record["rounds"]] == [5, 0]
    assert record["rounds"][1]["flag"] == {"step": 1, "reason": "The problem's 11 is not used by the program",
                                           "kind": "ungrounded"}
    assert prompts[1].endswith("<assistant>\n```python\n") and record["stop"] == "verified"
    assert record["final_check"]["answer"] == "20"
    with pytest.raises(ValueError, match="restart_after"):
        RepairOptions(restart_after=-1).check()


def test_without_a_threshold_the_prm_scores_only_what_the_loop_revises(monkeypatch):
    scored = []

    class RecordingScorer:
        def score_steps(self, questions, steps):
            scored.extend(questions)
            return [[0.9] * len(st) for st in steps]

    monkeypatch.setattr(loop, "generate", lambda model, tok, prompts, num_return_sequences=1, **kw:
                        [["lamp = 11\nmoney = money - lamp\nearned = 8\nmoney = money + earned\nprint(money)\n```"]
                         for _ in prompts])
    skipped = format_completion(RIGHT.replace("lamp = 11\nmoney = money - lamp\n", ""))
    items = [{"id": "fine", "question": QUESTION + " ", "completion": format_completion(RIGHT)},
             {"id": "z", "question": QUESTION, "completion": skipped}]
    policy = SimpleNamespace(model=None, tokenizer=WordTokenizer())
    fine, fixed = loop.repair(policy, items, RepairOptions(rounds=1, threshold=None, grounding=True),
                              scorer=RecordingScorer())
    # eval's loop: the one revision passes and the flagged original cannot outrank it, so nothing is tied
    # and the PRM is not asked at all
    assert scored == [] and fine["initial"]["step_scores"] is None and fixed["initial"]["score"] is None
    assert fixed["final_check"]["answer"] == "20" and fixed["stop"] == "verified"
    # the revise stage's loop (golds): the flagged original and its revision; never the unflagged answer
    fine, fixed = loop.repair(policy, items, RepairOptions(rounds=1, threshold=None, grounding=True),
                              scorer=RecordingScorer(), golds=[None, "20"])
    assert scored == [QUESTION, QUESTION]
    assert fine["initial"]["step_scores"] is None and fixed["initial"]["score"] == 0.9
    assert fixed["final_check"]["answer"] == "20"
    # with a threshold the PRM flags, so it scores every answer
    scored.clear()
    loop.repair(policy, items, RepairOptions(rounds=1, threshold=0.5, grounding=True), scorer=RecordingScorer())
    assert scored[:2] == [QUESTION + " ", QUESTION]
