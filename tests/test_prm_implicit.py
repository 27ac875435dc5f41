"""The implicit PRM (``prm_type: implicit``): step logits are beta times the summed log-likelihood
ratio of a causal LM to its frozen reference over the completion, shared by training, DreamPRM
reweighting and the scorer."""

from __future__ import annotations

import pytest
import torch

from stages.common.steps import split_solution
from stages.prm_lib.implicit import ImplicitHead, completion_logps, token_logps
from stages.prm_lib.model import EncodingConfig, completion_start, encode_solution, step_probabilities
from stages.prm_lib.scorer import PRMScorer
from stages.prm_lib.trainer import PRMCollator, PRMTrainer, featurize

QUESTION = "Ray saved $60. Then he earns $14. How much money does Ray have now?"
SOLUTION = "```python\nmoney = 60\nearned = 14\nmoney = money + earned\nprint(money)\n```"
CFG = EncodingConfig(prm_type="implicit", implicit_beta=0.7)


@pytest.fixture(scope="module")
def models(tiny_base):
    """(tokenizer, policy, reference, path): the policy is the reference with noise added, so that
    the log-ratio is not zero."""
    from stages.common.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(tiny_base), padding_side="right")
    reference = load_causal_lm(str(tiny_base)).eval()
    policy = load_causal_lm(str(tiny_base)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return tok, policy, reference, tiny_base


def _sequence_logprob(model, ids: list[int], start: int) -> float:
    """Sum of log p(token t | < t) for t >= start, through the model's own LM loss (an independent
    computation of what ``ImplicitHead`` sums)."""
    x = torch.tensor([ids])
    labels = x.clone()
    labels[:, :start] = -100
    with torch.no_grad():
        loss = model(input_ids=x, labels=labels).loss
    return -float(loss) * (len(ids) - start)


def test_step_logit_is_beta_times_the_completion_log_ratio_up_to_that_step(models):
    tok, policy, reference, path = models
    scorer = PRMScorer(path, model=policy, tokenizer=tok, config=CFG, reference=reference)
    steps = split_solution(SOLUTION)
    scores = scorer.score([QUESTION], [SOLUTION])[0]
    ids, positions = encode_solution(tok, QUESTION, steps, CFG)
    start = completion_start(tok, QUESTION, CFG)
    assert len(scores) == len(steps) and start < positions[0]
    for k, pos in enumerate(positions):
        prefix = ids[: pos + 1]
        q = CFG.implicit_beta * (_sequence_logprob(policy, prefix, start) - _sequence_logprob(reference, prefix, start))
        assert scores[k] == pytest.approx(1 / (1 + torch.exp(torch.tensor(-q)).item()), abs=1e-4)
    assert len({round(s, 4) for s in scores}) > 1  # the noise makes the ratio differ from step to step


def test_scores_are_one_half_when_the_model_is_its_reference(models):
    tok, _, reference, path = models
    scorer = PRMScorer(path, model=reference, tokenizer=tok, config=CFG, reference=reference)
    (scores,) = scorer.score([QUESTION], [SOLUTION])
    assert scores == pytest.approx([0.5] * 4, abs=1e-6)


def test_padding_and_later_steps_do_not_change_a_step_score(models):
    tok, policy, reference, path = models
    scorer = PRMScorer(path, model=policy, tokenizer=tok, config=CFG, reference=reference, batch_size=4)
    steps = split_solution(SOLUTION)
    longer = steps[:-1] + ["money = money * 2", "money = money - 1", "print(money)"]
    together = scorer.score_steps([QUESTION, "Other question?", QUESTION], [steps, ["x = 1"], longer])
    alone = PRMScorer(path, model=policy, tokenizer=tok, config=CFG, reference=reference).score_steps(
        [QUESTION], [steps])[0]
    assert together[0] == pytest.approx(alone, abs=1e-5)
    assert together[2][:3] == pytest.approx(alone[:3], abs=1e-5)  # same first three steps, causal model


def test_training_moves_step_scores_towards_the_labels(models, tmp_path):
    from transformers import TrainingArguments

    from stages.common.modeling import load_causal_lm

    tok, _, reference, path = models
    policy = load_causal_lm(str(path))
    good = {"prompt": QUESTION, "completions": ["money = 60", "earned = 14", "money = money + earned", "print(money)"],
            "labels": [True] * 4}
    bad = {"prompt": QUESTION, "completions": ["money = 60", "earned = 41", "money = money + earned", "print(money)"],
           "labels": [True, False, False, False]}
    feats = featurize([good, bad] * 8, tok, CFG)
    assert all(f["completion_start"] == completion_start(tok, QUESTION, CFG) for f in feats)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, learning_rate=1e-3, num_train_epochs=20,
                             per_device_train_batch_size=8, save_strategy="no", report_to="none",
                             remove_unused_columns=False, disable_tqdm=True, seed=0)
    trainer = PRMTrainer(model=policy, args=args, train_dataset=feats, data_collator=PRMCollator(tok.pad_token_id),
                         label_mode="hard", step_head=ImplicitHead(reference, CFG.implicit_beta))
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r] or [trainer.state.log_history[-1]["train_loss"]]
    scorer = PRMScorer(path, model=trainer.model.eval(), tokenizer=tok, config=CFG, reference=reference)
    s_good, s_bad = scorer.score_steps([QUESTION] * 2, [good["completions"], bad["completions"]])
    assert s_good[0] == pytest.approx(s_bad[0], abs=1e-5)  # the shared first step
    assert s_bad[1] < 0.5 < s_good[1] and min(s_bad) < min(s_good), (s_good, s_bad, losses)
    assert all(p.grad is None or not p.requires_grad for p in reference.parameters())  # the reference stays frozen


def test_dreamprm_look_ahead_runs_through_the_implicit_head(models):
    from stages.common.modeling import load_causal_lm
    from stages.prm_lib.reweight import DreamPRMReweighter

    tok, _, reference, path = models
    torch.manual_seed(0)
    policy = load_causal_lm(str(path))
    clean = [{"prompt": f"Q{i}", "completions": ["x = 1", "print(x)"], "labels": [True, True]} for i in range(4)]
    noisy = [{"prompt": f"N{i}", "completions": ["x = 1", "print(x)"], "labels": [False, False]} for i in range(4)]
    feats = featurize(clean + noisy, tok, CFG)
    meta = featurize([{"prompt": "M", "completions": ["x = 1", "print(x)"], "labels": [True, True]}], tok, CFG)
    rw = DreamPRMReweighter(list(range(8)), 8, meta, pad_token_id=tok.pad_token_id, label_mode="hard",
                            inner_lr=0.5, meta_lr=50.0, meta_batch_size=1,
                            step_head=ImplicitHead(reference, CFG.implicit_beta))
    w = rw.step(PRMCollator(tok.pad_token_id)(feats), policy)
    assert w.shape == (8,) and float(w.mean()) == pytest.approx(1.0, rel=1e-4)
    assert float(w[:4].min()) > float(w[4:].max())


def test_head_needs_completion_start_and_config_refuses_three_classes(models):
    tok, policy, reference, _ = models
    head = ImplicitHead(reference, 1.0)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(KeyError, match="completion_start"):
        head(policy(input_ids=ids).logits, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    logits = head(policy(input_ids=ids).logits, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                                  "completion_start": torch.tensor([3])})
    assert step_probabilities(logits, "hard").tolist() == [[0.5, 0.5, 0.5]]  # nothing after the prompt
    with pytest.raises(ValueError, match="three"):
        EncodingConfig(prm_type="implicit", label_mode="three")
    with pytest.raises(ValueError, match="prm_type"):
        EncodingConfig(prm_type="value_head")


def test_completion_logps_run_the_lm_head_only_where_needed_and_agree_with_full_logits(models):
    _, policy, _, _ = models
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    starts = torch.tensor([3, 2])
    with torch.no_grad():
        full = token_logps(policy(input_ids=ids, attention_mask=mask).logits, ids)
        part = completion_logps(policy, ids, mask, starts)
    assert part.shape == full.shape and bool((part[:, :2] == 0).all())
    assert torch.allclose(part[:, 2:], full[:, 2:], atol=1e-5)


def test_shared_prompt_scoring_equals_scoring_whole_sequences(models):
    """The scorer runs each distinct prompt once and reuses its key/value cache; the scores must be
    those of the plain one-pass path, for prompts of different lengths shared by several samples."""
    tok, policy, reference, path = models
    problems = [QUESTION, "Ava has 3 bags of 4 apples each. How many apples?", QUESTION, "Q?", QUESTION]
    solutions = [SOLUTION, "```python\nbags = 3\nper_bag = 4\nprint(bags * per_bag)\n```",
                 SOLUTION.replace("14", "41"), "```python\nprint(1)\n```",
                 SOLUTION.replace("print(money)", "money = money * 2\nprint(money)")]
    scorer = PRMScorer(path, model=policy, tokenizer=tok, config=CFG, reference=reference, batch_size=3)
    assert scorer.share_prompts
    shared = scorer.score(problems, solutions)
    scorer.share_prompts = False
    plain = scorer.score(problems, solutions)
    assert [len(s) for s in shared] == [len(s) for s in plain] == [4, 3, 4, 1, 5]
    for a, b in zip(shared, plain, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
