"""Data formats: every bad row is an error naming file, line and field; problem sources load, also\nwith a field mapping for benchmarks that name their fields otherwise."""

from __future__ import annotations

import json

import pytest

from stages.common.data import (
    DataFormatError,
    FieldMap,
    gsm8k_gold,
    load_gsm8k,
    load_problems,
    read_jsonl,
    source_file,
    split_source,
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


SVAMP_LIKE = [
    {"ID": "chal-1", "Body": "Jack had 8 pens and Mary had 5 pens.", "Question": "How many pens did they have?",
     "Answer": 13.0, "meta": {"gold": "13 (pens)"}},
    {"ID": "chal-2", "Body": "A box holds {4} cups.", "Question": "How many cups are in 2 boxes?", "Answer": "8",
     "meta": {"gold": "8"}},
]


def test_field_mapping_in_the_source_spec(tmp_path):
    path = _write(tmp_path / "svamp.jsonl", SVAMP_LIKE)
    rows = load_problems(f"{path}?question={{Body}} {{Question}}&answer=Answer&id=ID")
    assert rows == [
        {"id": "chal-1", "question": "Jack had 8 pens and Mary had 5 pens. How many pens did they have?",
         "answer": "13.0"},
        {"id": "chal-2", "question": "A box holds {4} cups. How many cups are in 2 boxes?", "answer": "8"},
    ]
    # a dotted path into a nested object; ids from file and line without an id field; {{ }} literal braces
    rows = load_problems(f"{path}?question={{{{Q}}}} {{Question}}&answer=meta.gold")
    assert [r["id"] for r in rows] == ["svamp-0", "svamp-1"]
    assert rows[0]["question"] == "{Q} How many pens did they have?" and rows[0]["answer"] == "13 (pens)"
    # the same mapping given as an object (what eval's --question_field/--answer_field build)
    fields = FieldMap(question="{Body} {Question}", answer="Answer", id="ID")
    assert load_problems(str(path), fields=fields) == load_problems(f"{path}?{fields.spec()}")
    assert split_source(f"{path}?{fields.spec()}") == (str(path), fields)
    assert source_file(f"{path}?answer=Answer") == path and source_file("arith:test:5") is None


def test_field_mapping_mistakes_name_file_line_and_field(tmp_path):
    path = _write(tmp_path / "svamp.jsonl", SVAMP_LIKE + [{"Body": "b", "Question": "q", "Answer": None}])
    with pytest.raises(DataFormatError, match=r"svamp\.jsonl:1: field 'Bdy' is missing"):
        load_problems(f"{path}?question={{Bdy}} {{Question}}&answer=Answer")
    with pytest.raises(DataFormatError, match=r"svamp\.jsonl:3: field 'Answer' expected a string or a number, got "
                                              r"NoneType"):
        load_problems(f"{path}?question=Question&answer=Answer")
    with pytest.raises(DataFormatError, match=r"'answr=Answer' is not one of question=\.\.\., answer=\.\.\., id="):
        load_problems(f"{path}?question=Question&answr=Answer")
    with pytest.raises(DataFormatError, match="applies to a jsonl file"):
        load_problems("gsm8k:test?answer=x")
    with pytest.raises(DataFormatError, match=r"nope\.jsonl: cannot be read"):
        load_problems(f"{tmp_path / 'nope.jsonl'}?answer=Answer")


def test_field_mapping_reads_worked_solutions(tmp_path):
    path = _write(tmp_path / "w.jsonl", [{"problem": "q?", "solution": "2 + 2 = 4\n#### 4"}])
    assert load_problems(f"{path}?question=problem&answer=solution") == [
        {"id": "w-0", "question": "q?", "answer": "4", "solution": "2 + 2 = 4\n#### 4"}]
