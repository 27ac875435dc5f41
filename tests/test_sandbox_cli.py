"""``python -m sandbox``: JSONL in, JSONL out in input order, clear errors for bad lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandbox", *args], input=stdin, capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_run_file_to_file_keeps_order_and_fields(tmp_path):
    rows = [{"id": i, "code": f"import time\ntime.sleep({0.05 * (i % 2)})\nprint({i} ** 2)"} for i in range(6)]
    rows.append({"id": "syntax", "code": "print("})
    rows.append({"id": "slow", "code": "while True:\n    pass"})
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(_jsonl(rows))
    proc = _cli("run", str(src), "-o", str(dst), "--timeout", "1", "--memory-mb", "128", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [o["id"] for o in out] == [r["id"] for r in rows]
    for o in out:
        assert set(o) >= {"id", "status", "answer", "stdout", "stderr", "elapsed_s"}
    assert [o["answer"] for o in out[:6]] == [str(i ** 2) for i in range(6)]
    assert out[6]["status"] == "error" and "SyntaxError" in out[6]["stderr"]
    assert out[7]["status"] == "timeout" and 1.0 <= out[7]["elapsed_s"] < 2.5


def test_run_stdin_to_stdout():
    proc = _cli("run", "-", "-o", "-", "--workers", "1", stdin=_jsonl([{"id": "a", "code": "print(2 + 2)"}]))
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert row["id"] == "a" and row["status"] == "ok" and row["answer"] == "4"


def test_malformed_line_names_the_file_and_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"id": 1, "code": "print(1)"}\n\n{"id": 2, "code": \n')
    proc = _cli("run", str(src))
    assert proc.returncode == 2
    assert f"{src}:3" in proc.stderr and "not valid JSON" in proc.stderr
    assert proc.stdout == ""  # nothing ran


def test_missing_or_wrong_field_is_named(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"id": 1, "code": "print(1)"}\n{"id": 2}\n')
    proc = _cli("run", str(src))
    assert proc.returncode == 2 and f"{src}:2" in proc.stderr and "'code'" in proc.stderr
    proc = _cli("run", "-", stdin='{"id": 1, "code": 5}\n')
    assert proc.returncode == 2 and "<stdin>:1" in proc.stderr and "must be a string" in proc.stderr


def test_report_prints_the_isolation_report():
    proc = _cli("report")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["network"] in ("netns", "seccomp") and "mode" in report
