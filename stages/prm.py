"""PRM stage: step labels, a process reward model, reweighting, evaluation.

Launch: ``accelerate launch --config_file accelerate_configs/cpu.yaml -m stages.prm --config
recipes/tiny/prm.yaml`` (or ``python -m stages.prm ...``). Steps (:mod:`stages.prm_lib.stage`):

1. step labels (``label_source``): ``mc`` (Math-Shepherd rollouts by the policy), ``judge`` (an
   LLM judge, optionally with the HE / SE transforms, the policy or the judge generating) or
   ``import`` (PRM800K, Math-Shepherd, ``pi`` scores, text/label rows, stepwise jsonl); the
   policy's problems are ordered by mistake mining (:mod:`stages.prm_lib.labelling`);
2. training: token classification at the step positions (:mod:`stages.prm_lib.trainer`), two
   classes, three classes or soft labels, LoRA (TOKEN_CLS), class weights, last step only; or
   ``prm_type: implicit``, a causal LM scored by its log-likelihood ratio to a frozen reference
   (:mod:`stages.prm_lib.implicit`; LoRA CAUSAL_LM); ``reweight: dreamprm`` learns instance or
   domain weights on a meta set (:mod:`stages.prm_lib.reweight`), ``--baseline`` switches that off;
3. evaluation into metrics.json: step metrics, ProcessBench first-error F1, best-of-N.

Scoring for people: ``python -m stages.prm score IN.jsonl -o OUT.jsonl [--checkpoint DIR]``.
"""

from __future__ import annotations

from transformers import TrainingArguments
from trl import ModelConfig

from stages.harness import Stage, cli
from stages.prm_lib.cli import score_command
from stages.prm_lib.stage import PRMStageArguments, build, prepare

STAGE = Stage("prm", (PRMStageArguments, TrainingArguments, ModelConfig), prepare=prepare, build=build)


def main(argv: list[str] | None = None):
    return STAGE.run(argv)


if __name__ == "__main__":
    cli(STAGE, commands={"score": score_command})
