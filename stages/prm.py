"""PRM stage: step labels, a process reward model, reweighting, evaluation.

Launch: ``accelerate launch --config_file accelerate_configs/cpu.yaml -m stages.prm --config
recipes/tiny/prm.yaml`` (or ``python -m stages.prm ...``). Steps (:mod:`stages.prm_lib.stage`):

1. step labels (``label_source``): ``mc`` (Math-Shepherd rollouts by the policy), ``judge`` (an
   LLM judge, optionally with the HE / SE transforms, the policy or the judge generating) or
   ``import`` (PRM800K, Math-Shepherd, ProcessRewardTrainer's input/value/label, DreamPRM,
   text/label rows, stepwise jsonl); mistake mining keeps the problems the policy fails 30% to 80%
   of the time (:mod:`stages.prm_lib.labelling`);
2. training (``prm_type``): token classification at the step positions
   (:mod:`stages.prm_lib.trainer`), two classes, three classes or soft labels, LoRA (TOKEN_CLS),
   class weights, last step only; ``implicit``, a causal LM scored by its log-likelihood ratio to a
   frozen reference (:mod:`stages.prm_lib.implicit`; LoRA CAUSAL_LM); ``sequence_classification``,
   the seed's PRM, one pass per step prefix (LoRA SEQ_CLS); ``embeddings``, a frozen sentence
   encoder and a small head (:mod:`stages.prm_lib.embeddings`); ``reweight: instance | domain``
   learns DreamPRM weights on a meta set (held out, or ``meta_json_file``;
   :mod:`stages.prm_lib.reweight`), ``--baseline`` switches that off;
3. evaluation into metrics.json: step metrics, per-class metrics with the confusion matrix,
   ProcessBench first-error F1, best-of-N.

For people: ``python -m stages.prm score IN.jsonl -o OUT.jsonl [--checkpoint DIR]`` (step scores)
and ``python -m stages.prm predict IN.jsonl -o OUT.jsonl [--checkpoint DIR]`` (step classes with
their probabilities).
"""

from __future__ import annotations

from transformers import TrainingArguments
from trl import ModelConfig

from stages.harness import Stage, cli
from stages.prm_lib.cli import predict_command, score_command
from stages.prm_lib.stage import PRMStageArguments, build, prepare

STAGE = Stage("prm", (PRMStageArguments, TrainingArguments, ModelConfig), prepare=prepare, build=build)


def main(argv: list[str] | None = None):
    return STAGE.run(argv)


if __name__ == "__main__":
    cli(STAGE, commands={"score": score_command, "predict": predict_command})
