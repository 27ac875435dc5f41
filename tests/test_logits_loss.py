"""``lm_head_loss: logits`` (stages/harness/logits_loss.py): the same loss, gradients and logged
metrics as TRL's fused LM head on the same batch, and the stages that fine-tune pick it up."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")


@pytest.fixture(scope="module")
def trainers(tiny_base, tmp_path_factory):
    import datasets
    from trl import SFTConfig, SFTTrainer

    from stages.common.arith import generate_problems
    from stages.common.modeling import load_causal_lm, load_tokenizer
    from stages.common.pot import format_completion
    from stages.harness.logits_loss import LogitsLossSFTTrainer
    from stages.harness.supervised import to_prompt_completion

    rows = [{"question": p["question"], "completion": format_completion(p["program"])}
            for p in generate_problems(16, split="train", seed=3)]
    dataset = datasets.Dataset.from_list([to_prompt_completion(r) for r in rows])
    tokenizer = load_tokenizer(tiny_base, padding_side="right")
    out = tmp_path_factory.mktemp("logits-loss")
    config = SFTConfig(output_dir=str(out), use_cpu=True, bf16=False, per_device_train_batch_size=8,
                       report_to="none", completion_only_loss=True, dataset_num_proc=1)

    def build(cls):
        torch.manual_seed(0)
        return cls(model=load_causal_lm(tiny_base), args=copy.deepcopy(config), train_dataset=dataset,
                   processing_class=tokenizer)

    fused, logits = build(SFTTrainer), build(LogitsLossSFTTrainer)
    batch = next(iter(fused.get_train_dataloader()))
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # a prompt mask to respect
    return fused, logits, batch


def _loss_and_grads(trainer, batch, **kwargs):
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, dict(batch), **kwargs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("num_items_in_batch", [None, 97])
def test_same_loss_and_gradients_as_trls_fused_head(trainers, num_items_in_batch):
    fused, logits, batch = trainers
    fused_loss, fused_grads = _loss_and_grads(fused, batch, num_items_in_batch=num_items_in_batch)
    logits_loss, logits_grads = _loss_and_grads(logits, batch, num_items_in_batch=num_items_in_batch)
    assert fused_loss > 1.0  # an untrained model: a real loss, not a zero from an empty mask
    torch.testing.assert_close(logits_loss, fused_loss, rtol=1e-5, atol=1e-5)
    assert fused_grads.keys() == logits_grads.keys() and fused_grads
    for name, grad in fused_grads.items():
        torch.testing.assert_close(logits_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_same_logged_metrics(trainers):
    fused, logits, batch = trainers
    for trainer in (fused, logits):
        trainer._metrics["train"].clear()
        trainer._total_train_tokens = 0
        _loss_and_grads(trainer, batch)
    for key in ("entropy", "mean_token_accuracy", "num_tokens"):
        assert logits._metrics["train"][key] == pytest.approx(fused._metrics["train"][key], rel=1e-4), key
    assert logits._metrics["train"]["num_tokens"] == [int(batch["attention_mask"].sum())]


def test_uncovered_configurations_go_to_trl(trainers):
    """Label smoothing needs TRL's own path: the subclass hands it over instead of ignoring it."""
    from transformers.trainer_pt_utils import LabelSmoother

    fused, logits, batch = trainers
    plain_loss, _ = _loss_and_grads(logits, batch)
    losses = []
    for trainer in (fused, logits):
        trainer.label_smoother = LabelSmoother(epsilon=0.9)
        try:
            losses.append(_loss_and_grads(trainer, batch)[0])
        finally:
            trainer.label_smoother = None
    torch.testing.assert_close(losses[1], losses[0])
    assert abs(float(losses[1] - plain_loss)) > 1e-3  # smoothing was applied, not the plain NLL


def test_stages_that_fine_tune_take_the_option():
    from stages.evolve_lib.stage import EvolveArguments
    from stages.harness import SupervisedTrainingArguments
    from stages.revise_lib.stage import ReviseArguments
    from stages.sft import SFTStageArguments

    for cls in (SFTStageArguments, EvolveArguments, ReviseArguments):
        assert issubclass(cls, SupervisedTrainingArguments)
        assert cls().lm_head_loss == "fused"  # TRL's default unless a recipe says otherwise


def test_a_recipe_value_outside_the_choices_is_refused_naming_the_file(tmp_path):
    """argparse checks ``choices`` on the command line only: the dataclass checks a recipe's value."""
    from trl import ModelConfig, SFTConfig

    from stages.common.config import ConfigError, parse_config
    from stages.sft import SFTStageArguments

    recipe = (Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "sft.yaml").read_text()
    assert "lm_head_loss: logits" in recipe
    bad = tmp_path / "sft.yaml"
    bad.write_text(recipe.replace("lm_head_loss: logits", "lm_head_loss: logit"))
    refused = r"sft\.yaml: .*lm_head_loss must be one of \['fused', 'logits'\], got 'logit'"
    with pytest.raises(ConfigError, match=refused):
        parse_config((SFTStageArguments, SFTConfig, ModelConfig), ["--config", str(bad)])
