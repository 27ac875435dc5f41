"""Data formats: every bad row is an error naming file, line and field; problem sources load."""

from __future__ import annotations

import json

import pytest

from stages.common.data import (
    DataFormatError,
    gsm8k_gold,
    load_gsm8k,
    load_problems,
    read_jsonl,
    write_jsonl,
)


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_problem_rows_validate_and_bad_row_names_line_and_field(tmp_path):
    good = {"id": "a", "question": "1+1?", "answer": "2"}
    path = _write(tmp_path / "p.jsonl", [good, {"id": "b", "question": "2+2?", "answer": 4}])
    with pytest.raises(DataFormatError) as e:
        read_jsonl(path, "problem")
    assert f"{path}:2" in str(e.value) and "'answer'" in str(e.value)
    assert e.value.line == 2 and e.value.field == "answer"


def test_missing_field_and_bad_json_are_named(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"id": "a", "question": "q"}])
    with pytest.raises(DataFormatError, match=r"p.jsonl:1: field 'answer' is missing"):
        read_jsonl(path, "problem")
    path = _write(tmp_path / "q.jsonl", [{"id": "a", "question": "q", "answer": "1"}, "{not json"])
    with pytest.raises(DataFormatError, match=r"q.jsonl:2: is not valid JSON"):
        read_jsonl(path, "problem")


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(DataFormatError, match="nope.jsonl: cannot be read"):
        read_jsonl(tmp_path / "nope.jsonl", "problem")


def test_verified_rejects_bool_as_int_and_accepts_null_answer(tmp_path):
    row = {"id": "a", "question": "q", "answer": "1", "completion": "c", "executed_answer": None,
           "correct": False, "source": "teacher", "n_tokens": True}
    path = _write(tmp_path / "v.jsonl", [row])
    with pytest.raises(DataFormatError, match="'n_tokens'"):
        read_jsonl(path, "verified")
    row["n_tokens"] = 12
    _write(path, [row])
    assert read_jsonl(path, "verified")[0]["executed_answer"] is None


@pytest.mark.parametrize("labels, ok", [
    ([True, False], True), ([0.5, 1], True), (["positive", "negative"], True),
    ([True], False), ([1.5, 0.0], False), (["maybe", True], False),
])
def test_stepwise_labels(tmp_path, labels, ok):
    path = _write(tmp_path / "s.jsonl", [{"prompt": "p", "completions": ["a", "b"], "labels": labels}])
    if ok:
        assert read_jsonl(path, "stepwise")[0]["labels"] == labels
    else:
        with pytest.raises(DataFormatError, match="s.jsonl:1: field 'labels"):
            read_jsonl(path, "stepwise")


def test_write_jsonl_is_atomic_and_round_trips(tmp_path):
    rows = [{"id": str(i), "question": "q", "answer": str(i)} for i in range(5)]
    path = tmp_path / "out" / "p.jsonl"
    assert write_jsonl(path, rows) == 5
    assert read_jsonl(path, "problem") == rows
    assert [p.name for p in path.parent.iterdir()] == ["p.jsonl"]  # no temp file left


def test_gsm8k_sources(gsm8k_dir):
    test = load_gsm8k("test")
    assert len(test) == 1319 and test[0]["answer"] == "18"
    assert gsm8k_gold("so 1,234 total\n#### 1,234") == "1234"
    assert load_problems("gsm8k:test:5") == test[:5]
    raw = load_problems(str(gsm8k_dir / "train.jsonl"))
    assert len(raw) == 7473 and raw[0]["answer"] == "72"


def test_arith_source_and_bad_gsm8k_row(tmp_path):
    rows = load_problems("arith:test:20:3")
    assert len(rows) == 20 and all(r["id"].startswith("arith-") for r in rows)
    bad = _write(tmp_path / "g.jsonl", [{"question": "q", "answer": "no final line ####"}])
    with pytest.raises(DataFormatError, match="g.jsonl:1: field 'answer'"):
        load_problems(str(bad))
