"""PRM encoding, loss, scoring, metrics and DreamPRM reweighting on the tiny Qwen2 backbone."""

from __future__ import annotations

import math

import pytest
import torch

from stages.prm_lib.metrics import best_of_n, first_error_metrics, step_metrics
from stages.prm_lib.model import IGNORE, EncodingConfig, encode_solution, load_token_classifier, step_target
from stages.prm_lib.scorer import PRMScorer
from stages.prm_lib.trainer import PRMCollator, featurize, prm_loss

SOLUTION = "```python\nmoney = 60\nearned = 14\nmoney = money + earned\nprint(money)\n```"
QUESTION = "Ray saved $60. Then he earns $14. How much money does Ray have now?"


@pytest.fixture(scope="module")
def tiny(tiny_base):
    from stages.common.modeling import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(str(tiny_base), padding_side="right")
    return tok, load_token_classifier(str(tiny_base), 2).eval(), tiny_base


def test_encoding_marks_the_last_token_of_each_step(tiny):
    tok, _, _ = tiny
    cfg = EncodingConfig()
    steps = ["a = 1", "b = a + 2", "print(b)"]
    ids, pos = encode_solution(tok, QUESTION, steps, cfg)
    assert len(pos) == 3 and pos == sorted(pos) and pos[-1] == len(ids) - 1
    prev = pos[0] + 1
    for step, p in zip(steps[1:], pos[1:], strict=True):
        assert tok.decode(ids[prev : p + 1]) == step + "\n"
        prev = p + 1
    short = EncodingConfig(max_length=pos[1] + 1)
    assert encode_solution(tok, QUESTION, steps, short)[1] == pos[:2]  # training drops what does not fit


def test_training_features_and_scoring_use_the_same_positions(tiny):
    tok, model, _ = tiny
    cfg = EncodingConfig()
    row = {"prompt": QUESTION, "completions": ["a = 1", "print(a)"], "labels": [True, False]}
    feat = featurize([row], tok, cfg)[0]
    _, pos = encode_solution(tok, QUESTION, row["completions"], cfg)
    assert [i for i, y in enumerate(feat["labels"]) if y != IGNORE] == pos
    assert [feat["labels"][p] for p in pos] == [1.0, 0.0]
    last = featurize([row], tok, cfg, last_step_only=True)[0]
    assert [i for i, y in enumerate(last["labels"]) if y != IGNORE] == pos[-1:]


def test_one_pass_scores_equal_per_prefix_scores(tiny):
    """A causal backbone's score of step i must not depend on the later steps."""
    tok, model, path = tiny
    scorer = PRMScorer(path, model=model, tokenizer=tok, config=EncodingConfig())
    full = scorer.score([QUESTION, "Other?"], [SOLUTION, "no code here\nsecond line"])
    assert len(full[0]) == 4 and len(full[1]) == 2
    from stages.common.steps import split_solution

    steps = split_solution(SOLUTION)
    for i in range(1, len(steps) + 1):
        part = scorer.score_steps([QUESTION], [steps[:i]])[0]
        assert part == pytest.approx(full[0][:i], abs=1e-5)
    assert all(0.0 < p < 1.0 for p in full[0])


def test_scorer_scores_duplicates_once_and_caches_the_encoding(tiny, monkeypatch):
    tok, model, path = tiny
    scorer = PRMScorer(path, model=model, tokenizer=tok, config=EncodingConfig(), batch_size=2)
    other = "a = 2\nb = a * 5\nprint(b)"
    problems, solutions = [QUESTION, QUESTION, "Other?", QUESTION], [SOLUTION, SOLUTION, other, other]
    reference = [PRMScorer(path, model=model, tokenizer=tok, config=EncodingConfig()).score([q], [s])[0]
                 for q, s in zip(problems, solutions, strict=True)]
    rows = []
    forward = model.forward

    def counting(*args, **kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    out = scorer.score(problems, solutions)
    assert sum(rows) == 3  # the repeated (problem, solution) pair is scored once
    for got, want in zip(out, reference, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    out[0][0] = -1.0  # each caller gets its own list
    assert out[1][0] != -1.0
    assert ("prompt", QUESTION) in scorer._cache and ("step", "print(b)") in scorer._cache


def test_loss_modes_and_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 2)
    labels = torch.full((2, 5), IGNORE)
    labels[0, 1], labels[0, 4], labels[1, 2] = 1.0, 0.0, 0.25
    z = logits[..., 1] - logits[..., 0]
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.stack([z[0, 1], z[0, 4], z[1, 2]]), torch.tensor([1.0, 0.0, 0.25]))
    assert prm_loss(logits, labels, "soft").item() == pytest.approx(want.item(), rel=1e-5)
    hard = labels.clone()
    hard[1, 2] = 1.0
    base = prm_loss(logits, hard, "hard")
    assert prm_loss(logits, hard, "hard", class_weights=[1.0, 1.0]).item() == pytest.approx(
        # class weights in torch's CE normalise by the weights; with equal weights nothing changes
        base.item(), rel=1e-5)
    up = prm_loss(logits, hard, "hard", instance_weights=torch.tensor([1.0, 3.0]))
    assert up.item() != pytest.approx(base.item())
    zero = prm_loss(logits, hard, "hard", instance_weights=torch.tensor([0.0, 1.0]))
    ce = torch.nn.functional.cross_entropy(logits[1, 2][None], torch.tensor([1]))
    assert zero.item() == pytest.approx(ce.item() / 3, rel=1e-5)
    three = torch.full((1, 3), IGNORE)
    three[0, 0], three[0, 2] = 2.0, 1.0
    l3 = torch.randn(1, 3, 3)
    want3 = torch.nn.functional.cross_entropy(l3[0, [0, 2]], torch.tensor([2, 1]))
    assert prm_loss(l3, three, "three").item() == pytest.approx(want3.item(), rel=1e-5)


def test_step_targets():
    assert step_target(True, "hard") == 1.0 and step_target(0.25, "hard") == 0.0
    assert step_target(0.25, "soft") == 0.25
    assert step_target("neutral", "three") == 1.0 and step_target(False, "three") == 0.0
    assert step_target("neutral", "hard", neutral_as=False) == 0.0


def test_first_error_and_step_metrics():
    gold = [[True, False, False], [True, True], [False]]
    probs = [[0.9, 0.2, 0.1], [0.8, 0.3], [0.7]]
    m = first_error_metrics(gold, probs)
    assert (m["acc_error"], m["acc_correct"]) == (0.5, 0.0) and m["f1"] == 0.0
    m = first_error_metrics(gold, [[0.9, 0.2, 0.1], [0.8, 0.9], [0.1]])
    assert (m["acc_error"], m["acc_correct"], m["f1"]) == (1.0, 1.0, 1.0)
    s = step_metrics([True, False, True, False], [0.9, 0.1, 0.4, 0.3])
    assert s["accuracy"] == 0.75 and s["roc_auc"] == 1.0 and s["wrong"]["recall"] == 1.0


def test_best_of_n_prm_pick_random_and_vote():
    def sample(score, correct, answer):
        return {"scores": [0.9, score], "correct": correct, "answer": answer}

    groups = [[sample(0.9, True, "1"), sample(0.1, False, "2"), sample(0.2, False, "2")] for _ in range(30)]
    m = best_of_n(groups, seed=0)
    assert m["prm_min"]["accuracy"] == 1.0 and m["prm_last"]["accuracy"] == 1.0
    assert m["majority_vote"]["accuracy"] == 0.0 and m["oracle"]["accuracy"] == 1.0
    assert m["random_expected_accuracy"] == pytest.approx(1 / 3)
    lo, hi = m["prm_min_minus_random"]["ci95"]
    assert lo == pytest.approx(2 / 3) and hi == pytest.approx(2 / 3)
    assert math.isclose(m["prm_product"]["accuracy"], 1.0)


def test_dreamprm_downweights_rows_whose_labels_contradict_the_meta_set(tiny):
    from stages.prm_lib.reweight import DreamPRMReweighter

    tok, _, path = tiny
    torch.manual_seed(0)
    model = load_token_classifier(str(path), 2)
    cfg = EncodingConfig()
    clean = [{"prompt": f"Q{i}", "completions": ["x = 1", "print(x)"], "labels": [True, True]} for i in range(4)]
    noisy = [{"prompt": f"N{i}", "completions": ["x = 1", "print(x)"], "labels": [False, False]} for i in range(4)]
    feats = featurize(clean + noisy, tok, cfg)
    meta = featurize([{"prompt": "M", "completions": ["x = 1", "print(x)"], "labels": [True, True]}], tok, cfg)
    rw = DreamPRMReweighter(list(range(8)), 8, meta, pad_token_id=tok.pad_token_id, label_mode="hard",
                            inner_lr=0.5, meta_lr=50.0, meta_batch_size=1)
    batch = PRMCollator(tok.pad_token_id)(feats)
    w = rw.step(batch, model)
    assert w.shape == (8,) and float(w.mean()) == pytest.approx(1.0, rel=1e-4)
    assert float(w[:4].min()) > float(w[4:].max())
    assert len(rw.history) == 1
