"""The synth stage end to end: verification reasons, the openai teacher through the stage (secret
never written, tokens and cost, crash and resume without paying twice, dry run), bad input, and the
tiny recipe feeding SFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_synth_teachers import SECRET, FakeEndpoint

from stages.common.data import VERIFIED, DataFormatError, read_jsonl, validate_row
from stages.synth import main

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe(tmp_path: Path, **fields) -> str:
    base = {"decontaminate": [], "seed": 0, "sandbox_timeout_s": 2.0}
    base.update(fields)
    path = tmp_path / "synth.yaml"
    path.write_text(yaml.safe_dump(base))
    return str(path)


def run_stage(tmp_path: Path, *extra: str, **fields) -> Path | None:
    return main(["--config", recipe(tmp_path, **fields), "--run", "r", "--runs_dir", str(tmp_path / "runs"),
                 *extra])


def test_reference_candidates_are_verified_in_the_sandbox_with_reasons(tmp_path):
    rows = [
        {"id": "good", "question": "What is 2 + 3?", "answer": "5", "program": "a = 2\nb = a + 3\nprint(b)"},
        {"id": "wrong", "question": "What is 2 + 4?", "answer": "6", "program": "print(2 + 5)"},
        {"id": "assert", "question": "What is 3 + 4?", "answer": "7", "program": "x = 7\nassert x == 8\nprint(x)"},
        {"id": "syntax", "question": "What is 4 + 4?", "answer": "8", "program": "print(4 +)"},
        {"id": "loop", "question": "What is 5 + 4?", "answer": "9", "program": "while True:\n    pass"},
        {"id": "none", "question": "What is 6 + 4?", "answer": "10"},
        {"id": "dup", "question": "what is 2 + 3 ?", "answer": "5", "program": "print(5)"},
    ]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    out = run_stage(tmp_path, problems=[str(src)], teachers=["reference"], sandbox_timeout_s=1.0)
    verified = read_jsonl(out / "verified.jsonl", "verified")
    assert [(r["id"], r["executed_answer"], r["source"]) for r in verified] == [("good", "5", "reference")]
    assert verified[0]["completion"] == "```python\na = 2\nb = a + 3\nprint(b)\n```"
    # the documented fallback: word and punctuation pieces (3 + 1 + 3 + 5 + 4 + 3)
    assert verified[0]["n_tokens"] == 19
    reasons = {r["id"]: r["reason"] for r in read_jsonl(out / "rejected.jsonl")}
    assert reasons == {"wrong": "wrong_answer", "assert": "error:AssertionError", "syntax": "error:SyntaxError",
                       "loop": "timeout", "none": "no reference program"}
    removed = read_jsonl(out / "removed.jsonl")
    assert removed == [{"id": "dup", "question": "what is 2 + 3 ?", "reason": "duplicate of good"}]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["problems"]["removed"] == {"duplicate": 1}
    assert metrics["teachers"]["reference"]["yield"] == pytest.approx(1 / 6)
    assert metrics["rejections"]["timeout"] == 1


def _openai_fields(endpoint: FakeEndpoint, src: Path, **kw) -> dict:
    fields = dict(problems=[str(src)], teachers=["openai"], openai_model="test-model", base_url=endpoint.url,
                  api_key_env="MF_TEST_KEY", concurrency=3, request_timeout_s=2.0, backoff_base_s=0.01,
                  backoff_max_s=0.05, price_input_per_mtok=1.0, price_output_per_mtok=2.0, num_samples=2,
                  max_attempts=2, keep_per_problem=1, temperature=0.5, max_tokens=64)
    fields.update(kw)
    return fields


def _qa_problems(tmp_path: Path, endpoint: FakeEndpoint) -> Path:
    rows = [{"id": f"q{i}", "question": f"What is {i} times 3?", "answer": str(3 * i)} for i in range(6)]
    endpoint.answers = {"What is 0 times 3?": "print(0 * 3)",
                        "What is 1 times 3?": "print(1 + 3)",  # wrong every time
                        "What is 3 times 3?": "x = 3 * 3\nassert x == 10\nprint(x)",
                        "What is 4 times 3?": "print(4 * 3)"}
    endpoint.script = {"What is 2 times 3?": ["nocode"], "What is 4 times 3?": ["429", "500", "ok"],
                       "What is 5 times 3?": ["400"]}  # the endpoint refuses this one, every time
    return write_jsonl(tmp_path / "qa.jsonl", rows)


def test_openai_teacher_through_the_stage(monkeypatch, tmp_path, capfd, caplog):
    monkeypatch.setenv("MF_TEST_KEY", SECRET)
    endpoint = FakeEndpoint()
    try:
        src = _qa_problems(tmp_path, endpoint)
        fields = _openai_fields(endpoint, src)
        # dry run: prints the plan, writes nothing, asks the endpoint nothing
        run_stage(tmp_path, "--dry_run", "true", **fields)
        plan = json.loads(capfd.readouterr().out)
        assert plan["dry_run"] and plan["openai_samples_first_round"]["to_request"] == 12
        assert plan["api_key_set"] is True
        assert endpoint.total == 0 and not (tmp_path / "runs").exists()

        # a crash after the teacher answered (here: in verification) leaves the cache behind
        from stages.synth_lib import synthesize

        real = synthesize.score_pot

        def boom(*a, **k):
            raise RuntimeError("simulated crash")

        monkeypatch.setattr(synthesize, "score_pot", boom)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_stage(tmp_path, **fields)
        paid = endpoint.total
        cache = tmp_path / "runs" / "r" / "synth" / "cache" / "openai.jsonl"
        assert paid >= 6 and len(cache.read_text().splitlines()) == 10  # failures are not cached
        monkeypatch.setattr(synthesize, "score_pot", real)

        out = run_stage(tmp_path, **fields)  # resumes the .partial build
        assert out.name == "v1"
        # round 1 came from the cache (q5 failed: asked again); round 2 asks only for the unsolved
        # problems (q1, q2, q3, q5)
        assert endpoint.total == paid + 5
        verified = read_jsonl(out / "verified.jsonl", "verified")
        assert sorted(r["id"] for r in verified) == ["q0", "q4"]
        assert all(r["source"] == "openai:test-model" and r["completion"].startswith("```python") for r in verified)
        rejected = read_jsonl(out / "rejected.jsonl")
        by = {}
        for r in rejected:
            by.setdefault(r["id"], set()).add(r["reason"])
        assert by["q1"] == {"wrong_answer"} and by["q2"] == {"no_code"} and by["q3"] == {"error:AssertionError"}
        assert by["q5"] == {"teacher_error"}
        assert all(r["detail"].startswith("http 400") for r in rejected if r["id"] == "q5")
        assert sum(r["id"] == "q1" for r in rejected) == 4  # two rounds of two samples
        # q0 and q4: the second sample is the same program, a duplicate
        assert {r["reason"] for r in rejected if r["id"] in ("q0", "q4")} == {"duplicate solution"}
        metrics = json.loads((out / "metrics.json").read_text())
        t = metrics["teachers"]["openai:test-model"]
        assert t["problems"] == 6 and t["solved"] == 2 and t["rounds"] == 2
        assert t["cache_hits"] == 10 and t["new_samples"] == 6 and t["failed_samples"] == 4
        assert t["usage"]["errors"] == {"http_400": 2} and t["usage"]["failed"] == 2
        # paid in this run: round 2's three requests; the "nocode" replies carry no usage block
        assert metrics["tokens"]["prompt"] == 2 * 100 and metrics["tokens"]["completion"] == 2 * 2 * 20
        assert metrics["tokens"]["cost_usd"] == pytest.approx((200 * 1.0 + 80 * 2.0) / 1e6)
        assert metrics["cache_dir"] == str(cache.parent.resolve())

        # same config again: the complete version is reused, nothing is asked
        before = endpoint.total
        assert run_stage(tmp_path, **fields) == out and endpoint.total == before
        # a change that does not touch the prompts builds v2 from the cache: only the refused
        # problem is asked again (failures are not cached), once per round
        out2 = run_stage(tmp_path, **{**fields, "sandbox_timeout_s": 3.0})
        assert out2.name == "v2" and endpoint.total == before + 2
        assert endpoint.calls["What is 5 times 3?"] == 5

        # the key is sent to the endpoint but never written or logged
        texts = [p.read_text(errors="replace") for p in (tmp_path / "runs").rglob("*") if p.is_file()]
        captured = capfd.readouterr()
        assert texts and not any(SECRET in t for t in texts)
        assert SECRET not in captured.out + captured.err + caplog.text
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["config"]["SynthArguments"]["api_key_env"] == "MF_TEST_KEY"
    finally:
        endpoint.close()


def test_bad_input_names_file_and_line(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "question": "q?", "answer": "1"},
                                             {"id": "b", "question": "no answer?"}])
    with pytest.raises(DataFormatError, match=r"p\.jsonl:2: field 'answer' is missing"):
        run_stage(tmp_path, problems=[str(src)], teachers=["reference"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "q?", "answer": "1"}\n{oops\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2"):
        run_stage(tmp_path, problems=[str(bad)], teachers=["reference"])
    with pytest.raises(DataFormatError, match=r"missing\.jsonl.*does not exist"):
        run_stage(tmp_path, problems=[str(tmp_path / "missing.jsonl")], teachers=["reference"])
    unreadable = tmp_path / "dir.jsonl"
    unreadable.mkdir()
    with pytest.raises(DataFormatError, match=r"dir\.jsonl.*cannot be read"):
        run_stage(tmp_path, problems=[str(unreadable)], teachers=["reference"])
    with pytest.raises(Exception, match="unknown teacher 'oracle'"):
        run_stage(tmp_path, problems=["arith:train:5"], teachers=["oracle"])
    monkeypatch.delenv("MF_UNSET_KEY", raising=False)
    with pytest.raises(Exception, match=r"\$MF_UNSET_KEY, which is not set"):
        run_stage(tmp_path, problems=["arith:train:5"], teachers=["openai"], openai_model="m",
                  api_key_env="MF_UNSET_KEY")
    assert not (tmp_path / "runs").exists()  # nothing written before the inputs are valid


@pytest.mark.slow
def test_tiny_recipe_feeds_sft(tmp_path):
    """The tiny recipe (fewer problems): verified rows in the VERIFIED format with n_tokens from the
    student's tokenizer, skipped on rerun, read by SFT through @synth."""
    from stages.common.checkpoint import stage_ref
    from stages.common.modeling import load_tokenizer
    from stages.harness.supervised import load_solution_rows

    argv = ["--config", str(REPO / "recipes/tiny/synth.yaml"), "--problems", "arith:train:300",
            "--run", "r", "--runs_dir", str(tmp_path / "runs")]
    out = main(argv)
    rows = read_jsonl(out / "verified.jsonl", "verified")
    assert len(rows) == 300 and all(validate_row(r, VERIFIED) for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parent"]["stage"] == "base"
    tok = load_tokenizer(manifest["parent"]["path"])
    assert rows[0]["n_tokens"] == len(tok(rows[0]["completion"], add_special_tokens=False)["input_ids"])
    assert main(argv) == out  # complete: skipped
    sft_rows = load_solution_rows([stage_ref("@synth", tmp_path / "runs" / "r")], seed=0)
    assert len(sft_rows) == 300 and sft_rows[0]["completion"] == rows[0]["completion"]


def test_a_source_with_a_field_mapping(tmp_path):
    # a benchmark's own field names, mapped in the recipe's source: read, ids kept, the file hashed
    src = write_jsonl(tmp_path / "bench.jsonl", [{"uid": "q1", "body": "Tom has 2 cats.", "ask": "How many cats?",
                                                  "gold": "2 (cats)"}])
    out = run_stage(tmp_path, problems=[f"{src}?question={{body}} {{ask}}&answer=gold&id=uid"], teachers=["reference"])
    rejected = read_jsonl(out / "rejected.jsonl")
    assert [(r["id"], r["question"], r["answer"], r["reason"]) for r in rejected] == [
        ("q1", "Tom has 2 cats. How many cats?", "2 (cats)", "no reference program")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [i["path"] for i in manifest["inputs"]] == [str(src)]
