"""The answer-checking CLI, ``python -m rewards check`` (rewards.cli)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rewards.cli import main
from stages.common.data import gsm8k_dir

REPO = Path(__file__).resolve().parents[1]
GSM8K = gsm8k_dir()


def test_module_entry_point_checks_one_pair() -> None:
    ok = subprocess.run([sys.executable, "-m", "rewards", "check", "--pred", "The answer is $1,000.", "--gold", "1000"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"pred_answer": "$1,000", "gold_answer": "1000", "equivalent": True}


def test_pair_verdicts_and_exit_codes(capsys) -> None:
    assert main(["check", "--pred", "\\frac{6}{4}", "--gold", "1.4"]) == 1
    assert json.loads(capsys.readouterr().out)["equivalent"] is False
    assert main(["check", "--pred", "A: 7", "--gold", "He has 3+4=7 apples\n#### 7"]) == 0
    assert json.loads(capsys.readouterr().out) == {"pred_answer": "7", "gold_answer": "7", "equivalent": True}
    assert main(["check", "--pred", "7", "--gold", "  "]) == 1
    assert json.loads(capsys.readouterr().out)["equivalent"] is None


@pytest.mark.skipif(GSM8K is None, reason="GSM8K not found (set MATHFORGE_GSM8K_DIR)")
def test_batch_mode_agrees_with_the_labelled_model_solutions(tmp_path: Path, capsys) -> None:
    args = ["check", "--jsonl", str(GSM8K / "example_model_solutions.jsonl"), "--gold-field", "ground_truth",
            "--out", str(tmp_path / "out.jsonl")]
    for s in ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"):
        args += ["--pred-field", f"{s}.solution", "--label-field", f"{s}.is_correct"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["predictions"] == 5276 and summary["agreement"] == 1.0 and summary["disagreements"] == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 5276
    assert sum(r["correct"] for r in rows) == summary["correct"] == sum(r["label"] for r in rows)


def test_batch_mode_reports_disagreements_and_bad_rows(tmp_path: Path, capsys) -> None:
    data = tmp_path / "d.jsonl"
    rows = [{"completion": "so 4\n#### 4", "answer": "4", "ok": True},
            {"completion": "The answer is 5.", "answer": "4", "ok": True},  # a wrong label
            {"completion": "#### 1", "answer": "", "ok": False}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["check", "--jsonl", str(data), "--label-field", "ok"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["correct"], summary["incorrect"], summary["unparseable_gold"]) == (1, 1, 1)
    assert summary["disagreements"] == 1 and summary["first_disagreements"][0]["line"] == 2

    assert main(["check", "--jsonl", str(data), "--pred-field", "solution"]) == 2
    assert f"{data}:1: field 'solution' is missing" in capsys.readouterr().err
