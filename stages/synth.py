"""Synth stage: teacher data synthesis with sandbox verification.

Launch: ``accelerate launch -m stages.synth --config recipes/tiny/synth.yaml`` (or ``python -m
stages.synth ...``). Problems come from ``problems`` (``arith:...``, ``gsm8k:<split>[:n]``, a
jsonl); exact and near duplicates and problems overlapping the evaluation sets (13-gram overlap
with GSM8K test by default) are removed first. The teachers in ``teachers`` then propose PoT
completions, in order (a later teacher only sees the problems the earlier ones left unsolved):

- ``reference``: the embedded arithmetic task's reference programs (the tiny recipe);
- ``gsm8k-annotations``: GSM8K's calculator annotations as programs (offline, free);
- ``openai``: an OpenAI-compatible endpoint (``openai_model``, ``base_url``, key in ``$api_key_env``);
- ``local``: an HF causal LM (``local_model``), with transformers or vLLM.

Every candidate runs in the sandbox and is compared with the gold answer (``rewards.score_pot``);
chat teachers sample ``num_samples`` per round for up to ``max_attempts`` rounds until a problem
has ``keep_per_problem`` distinct verified programs. The output checkpoint
``<runs_dir>/<run>/synth/vN/`` holds ``verified.jsonl`` (the Verified format, read by SFT),
``rejected.jsonl`` (every failed candidate with its reason), ``removed.jsonl`` (problems removed
by hygiene) and ``metrics.json`` (yield per teacher, rejection reasons, tokens and cost).

Chat responses are cached in ``<runs_dir>/<run>/synth/cache/`` (outside the versioned folders) as
they arrive, so a rerun or a run after Ctrl-C or a crash pays for nothing twice.

``n_tokens`` of a verified row counts the completion with the tokenizer of ``tokenizer`` (the
student model; it becomes the stage's parent); without one it falls back to the number of word
and punctuation pieces (``\\w+|[^\\w\\s]``), a rough, tokenizer-free length.
"""

from __future__ import annotations

from stages.harness import Stage, cli
from stages.synth_lib.synthesize import SynthArguments, build, prepare

STAGE = Stage("synth", (SynthArguments,), prepare=prepare, build=build)


def main(argv: list[str] | None = None):
    return STAGE.run(argv)


if __name__ == "__main__":
    cli(STAGE)
