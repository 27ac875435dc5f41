"""eval.report on a run with every kind of checkpoint content, opened in headless Chromium:
every plot must load (naturalWidth > 0) and the screenshot must show plot colours."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from eval import report
from eval.results import publish
from stages.common.checkpoint import checkpoint_key, open_stage, resolve_parent

CHROMIUM_INSTALL = "apt-get install -y chromium"
EXPECTED_IMAGES = {"story.png", "accuracy.png", "length.png", "curves_sft_v1.png", "curves_grpo_v1.png", "data.png", "prm.png",
                   "lineage.png"}


def _ckpt(run_dir: Path, stage: str, parent, metrics: dict, *, logs=None, files=None, evals=None):
    ck = open_stage(run_dir, stage, checkpoint_key(config={"stage": stage}, parent=parent, inputs=[], seed=0))
    for name, rows in (files or {}).items():
        (ck.partial_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if logs is not None:
        (ck.partial_dir / "log_history.json").write_text(json.dumps(logs))
    final = ck.finalize(metrics=metrics)
    for i, sets in enumerate(evals or []):
        publish(final / "eval", f"key{i}", {"sets": sets, "finished_at": f"2026-01-0{i + 1}T00:00:00+00:00"},
                {}, {})
    return resolve_parent(str(final))


def _eval_sets(arith: float, gsm: float, tokens: float) -> dict:
    def m(p, n):
        return {"n": n, "pass@1": p, "pass@1_ci95": [max(0, p - 0.05), min(1, p + 0.05)],
                "mean_completion_tokens": tokens, "sampled": {"pass@1": p, "pass@4": min(1, p + 0.1), "maj@4": p}}

    return {"arith:test:500": {"pot": m(arith, 500)}, "gsm8k:test:100": {"pot": m(gsm, 100)}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "demo"
    base = _ckpt(run, "base", None, {})
    synth = _ckpt(run, "synth", base, {"yield": 0.62, "verified_rows": 31},
                  files={"verified.jsonl": [{"id": str(i)} for i in range(31)]})
    sft_logs = [{"step": s, "loss": 3.0 / s, "mean_token_accuracy": 0.5 + s / 40} for s in range(1, 11)]
    sft = _ckpt(run, "sft", synth, {"eval": {"arith:test:500": {"pass@1": 0.4, "n": 500}}}, logs=sft_logs,
                files={"eval_details.jsonl": [{"id": "a"}] * 5},
                evals=[_eval_sets(0.30, 0.01, 60.0), _eval_sets(0.41, 0.02, 58.0)])
    _ckpt(run, "prm", sft, {"step_accuracy": 0.81, "f1": 0.74, "roc_auc": 0.88, "train_wall_s": 42.0})
    grpo_logs = [{"step": s, "loss": 0.1, "reward": s / 10, "rewards/correctness/mean": s / 12, "kl": 0.01 * s,
                  "completions/mean_length": 60 - s} for s in range(1, 8)]
    _ckpt(run, "grpo", sft, {}, logs=grpo_logs, evals=[_eval_sets(0.55, 0.03, 48.0)])
    return run


def test_report_content(run_dir: Path):
    html_path, md_path = report.build(run_dir)
    assert {p.name for p in (run_dir / report.ASSETS).glob("*.png")} == EXPECTED_IMAGES
    md = md_path.read_text()
    # the newest evaluation of sft (0.41) wins over the older one (0.30)
    assert "| sft/v1 | arith:test:500 | pot | eval | 500 | 0.410 |" in md
    assert "| grpo/v1 | gsm8k:test:100 | pot | eval | 100 | 0.030 |" in md
    assert "sampled maj@4" in md and "| prm/v1 | roc_auc | 0.880 |" in md
    assert "train_wall_s" not in md  # not a [0, 1] PRM metric
    assert "| synth/v1 | verified.jsonl | 31 |" in md and "| synth/v1 | yield | 0.620 |" in md
    assert "| grpo/v1 | sft/v1 |" in md  # lineage: parent of grpo
    # the first section tells the run in one table: pass@1 and tokens per eval set, and the change
    assert md.index("## The run at a glance") < md.index("## Accuracy per stage")
    assert "| sft/v1 | 0.410 | 58.000 | 0.020 | 58.000 |" in md
    assert "| grpo/v1 | 0.550 | 48.000 | 0.030 | 48.000 | +14.0 pts | +1.0 pts |" in md
    assert "| pass@1 usual (arith:test:500) | tokens usual (arith:test:500) |" in md  # named sets in the header
    assert md.index("## Eval sets") < md.index("## Accuracy per stage")
    assert "| gsm8k:test:100 | GSM8K |" in md and "expected to score 0 here" in md
    assert report.curve_keys(json.loads((run_dir / "grpo" / "v1" / "log_history.json").read_text()))[:2] == \
        ["loss", "reward"]
    page = html_path.read_text()
    assert len(re.findall(r"<img ", page)) == len(EXPECTED_IMAGES)


def test_sections_without_data_have_no_plot(tmp_path: Path):
    run = tmp_path / "run"
    base = _ckpt(run, "base", None, {})
    _ckpt(run, "sft", base, {"eval": {"arith:test:40": {"pass@1": 0.25, "n": 40, "pass@1_ci95": [0.1, 0.4]},
                                      "arith:test:20:levels=4": {"pass@1": 0.5, "n": 20}}})
    _, md_path = report.build(run)
    assert {p.name for p in (run / report.ASSETS).glob("*.png")} == {"story.png", "accuracy.png", "lineage.png"}
    md = md_path.read_text()
    for note in ("no PRM checkpoint in this run", "no trainer logs", "no data artifacts", "no evaluation results yet"):
        assert f"_{note}" in md, note
    # no eval/ results: the pass@1 the stage measured itself is shown
    assert "| sft/v1 | arith:test:40 | pot | metrics.json | 40 | 0.250 |" in md
    assert "| sft/v1 | arith:test:20:levels=4 | pot | metrics.json | 20 | 0.500 |" in md
    assert "| arith:test:20:levels=4 | hard | the hard split:" in md and "| arith:test:40 | usual |" in md


@pytest.mark.parametrize(("source", "name"), [
    ("arith:test:500", "usual (arith:test:500)"),
    ("arith:test:300:0:levels=4", "hard (arith:test:300:0:levels=4)"),
    ("arith:test:300:0:levels=2,4", "arith:test:300:0:levels=2,4"),   # a mix is neither
    ("gsm8k:test:50", "GSM8K (gsm8k:test:50)"),
    ("data/mine.jsonl", "data/mine.jsonl"),
])
def test_set_names(source, name):
    assert report.set_name(source) == name


def test_report_cli_on_empty_run(tmp_path: Path):
    assert report.main([str(tmp_path)]) == 0
    assert "no evaluation results yet" in (tmp_path / "report.md").read_text()
    assert report.main([str(tmp_path / "missing")]) == 2


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail(f"headless Chromium is required for the report test and was not found; install it with "
                f"'{CHROMIUM_INSTALL}' (Debian) and rerun")


def _run_chromium(*args: str, timeout: float = 120) -> str:
    """Run headless Chromium; its helper processes may keep pipes open, so output goes to a file and
    the whole process group is ended afterwards."""
    with tempfile.TemporaryDirectory() as profile, tempfile.TemporaryFile("w+") as out:
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.seek(0)
        return out.read()


def _images(dom: str) -> list[dict]:
    m = re.search(r'data-images="([^"]*)"', dom)
    assert m, "the report's load handler did not run (no data-images on <body>)"
    return json.loads(html.unescape(m.group(1)))


@pytest.mark.slow
def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path):
    import numpy as np
    from matplotlib.image import imread

    html_path, _ = report.build(run_dir)
    images = _images(_run_chromium("--dump-dom", html_path.resolve().as_uri()))
    assert {Path(i["src"]).name for i in images} == EXPECTED_IMAGES
    assert all(i["naturalWidth"] > 0 and i["naturalHeight"] > 0 for i in images), images

    shot = tmp_path / "report.png"
    _run_chromium(f"--screenshot={shot}", "--window-size=1200,2000", html_path.resolve().as_uri())
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    # matplotlib's first colour (tab:blue, the accuracy bars) is on the page: a plot was drawn
    tab_blue = np.array([31, 119, 180]) / 255
    assert (np.abs(pixels - tab_blue).max(axis=-1) < 0.03).sum() > 500

    # the check can fail: a missing plot is reported as a broken image
    (run_dir / report.ASSETS / "prm.png").unlink()
    broken = {Path(i["src"]).name: i for i in _images(_run_chromium("--dump-dom", html_path.resolve().as_uri()))}
    assert broken["prm.png"]["naturalWidth"] == 0 and broken["accuracy.png"]["naturalWidth"] > 0
    report.build(run_dir)  # restore for other tests


def test_story_labels_of_close_values_do_not_overlap():
    sets = ["hard", "usual", "gsm8k"]
    row = {"pass@1 hard": 0.953, "pass@1 usual": 0.990, "pass@1 gsm8k": 0.0}
    # hard just under usual: its label goes below the point, usual's and gsm8k's (far away) stay above
    assert [report._label_offset(row, sets, k) for k in range(3)] == [-12, 6, 6]
    row = {"pass@1 hard": 0.996, "pass@1 usual": 0.996, "pass@1 gsm8k": None}
    # equal values: the set listed later goes below, so the two labels still differ
    assert [report._label_offset(row, sets, k) for k in range(2)] == [6, -12]
    row = {"pass@1 hard": 0.653, "pass@1 usual": 0.998, "pass@1 gsm8k": 0.0}
    assert [report._label_offset(row, sets, k) for k in range(3)] == [6, 6, 6]
