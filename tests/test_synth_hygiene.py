"""Hygiene of synthesized data (duplicates, 13-gram decontamination) and the local teacher."""

from __future__ import annotations

import json

import pytest

from stages.common.pot import program_key
from stages.synth_lib.hygiene import Decontaminator, decontaminate, dedup_problems, word_ngrams

EVAL_Q = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
          "for her friends every day with four. How much does she make every day at the farmers' market?")


def test_13_gram_overlap_with_the_eval_set_is_removed_and_counted():
    decon = Decontaminator({"gsm8k:test": [EVAL_Q]}, n=13)
    words = EVAL_Q.split()
    copied = {"id": "copy", "question": "A story. " + " ".join(words[5:18]).upper() + " and more.", "answer": "1"}
    twelve = {"id": "twelve", "question": " ".join(words[5:17]) + " then something else entirely.", "answer": "1"}
    clean = {"id": "clean", "question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "7"}
    kept, removed = decontaminate([copied, twelve, clean], decon)
    assert [p["id"] for p in kept] == ["twelve", "clean"]  # 12 shared words are not 13
    assert [(r.problem["id"], r.reason) for r in removed] == [("copy", "contaminated: gsm8k:test (13-gram overlap)")]
    assert len(word_ngrams(EVAL_Q, 13)) == len(words) - 12


def test_exact_and_near_duplicates_but_not_different_problems():
    base = ("A farmer has 12 cows and buys 5 more cows at the market on Monday morning. Then 3 cows run away "
            "into the forest. How many cows does the farmer have now?")
    problems = [
        {"id": "a", "question": base, "answer": "14"},
        {"id": "b", "question": "  " + base.upper().replace(".", " .") + " ", "answer": "14"},  # exact, modulo case
        {"id": "c", "question": base + " Answer in cows.", "answer": "14"},  # near: 29 of 32 shingles shared
        {"id": "d", "question": base.replace("3 cows", "4 cows"), "answer": "13"},  # another problem
    ]
    kept, removed = dedup_problems(problems, near_threshold=0.9)
    assert [p["id"] for p in kept] == ["a", "d"]
    assert [(r.problem["id"], r.reason) for r in removed] == [("b", "duplicate of a"), ("c", "near-duplicate of a")]
    assert [p["id"] for p in dedup_problems(problems, near_threshold=0.95)[0]] == ["a", "c", "d"]
    assert [p["id"] for p in dedup_problems(problems, near_threshold=None)[0]] == ["a", "c", "d"]


def test_program_key_ignores_names_comments_and_spacing_only():
    a = "apples = 3\nmore = apples + 4  # add\nprint(more)"
    b = "# count\nx=3\n\ny = x+4\nprint(y)"
    c = "apples = 3\nmore = apples + 5\nprint(more)"
    assert program_key(a) == program_key(b)
    assert program_key(a) != program_key(c)
    assert program_key("print(1 +") == program_key("  print(1 +  \n# c")


@pytest.mark.slow
def test_local_teacher_samples_in_batches_and_caches(tmp_path, tiny_base):
    from stages.common.chat import LocalChat, ResponseCache
    from stages.synth_lib.teachers import ChatTeacher

    model = str(tiny_base)  # a stage checkpoint of the embedded model
    problems = [{"id": f"p{i}", "question": f"Ava has {i} apples. How many?", "answer": str(i)} for i in range(3)]
    chat = LocalChat(model, batch_size=2, backend="transformers", seed=0)
    teacher = ChatTeacher(chat, ResponseCache(tmp_path / "cache.jsonl"), temperature=1.0, max_tokens=6)
    cands = list(teacher.propose(problems, [0, 1]))
    assert sorted((c.problem_id, c.sample) for c in cands) == [(f"p{i}", s) for i in range(3) for s in (0, 1)]
    assert all(isinstance(c.completion, str) for c in cands)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    # tokens are counted on the returned text, as an API bills them (a random model's bytes can
    # re-tokenize longer than the ids it generated)
    expected = sum(len(tok(c.completion, add_special_tokens=False)["input_ids"]) for c in cands)
    assert chat.usage.requests == 2 and chat.usage.completion_tokens == expected > 0
    rows = [json.loads(x) for x in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["model"] for r in rows} == {f"local:{model}"}
    chat2 = LocalChat(model, batch_size=2, backend="transformers", seed=0)
    again = list(ChatTeacher(chat2, ResponseCache(tmp_path / "cache.jsonl"), temperature=1.0,
                             max_tokens=6).propose(problems, [0, 1]))
    assert chat2.usage.requests == 0 and chat2._model is None  # not even loaded
    assert {(c.problem_id, c.sample): c.completion for c in again} == \
           {(c.problem_id, c.sample): c.completion for c in cands}
