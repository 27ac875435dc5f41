"""Saved activations per decoder layer and token of Qwen2.5-Math-1.5B's layer shape, measured, against the
formula plan-memory uses (stages.common.memory._activation_bytes_per_token_layer).

    .venv/bin/python bench/activation_bytes.py [--quick] [--check] [--json PATH] [--seq 128 256]

Counts the bytes of every tensor autograd saves during a forward pass (``torch.autograd.graph.
saved_tensors_hooks``, each storage once, parameters excluded) for 1- and 2-layer models at two sequence
lengths (a small vocabulary: the layers are what is measured); the per-layer, per-token slope is the
difference. Variants: bf16 weights, fp32 weights, fp32 weights under bf16 autocast, bf16 with LoRA r=64 on
every linear layer (with and without dropout).

Figures, one per variant: plan-memory's bytes against the measured slope (the baseline), ratio = plan /
measured. Targets: every ratio >= 0.98 (plan-memory never counts more than 2% fewer bytes than autograd
saves: an undercount is an out-of-memory error that the plan said would fit), and the largest
|plan / measured - 1| over the variants <= 0.05 (an overcount makes plan-memory pick smaller batches than
fit). The constants of memory.py come from this measurement: the ratios were 1.000-1.001. ``--quick`` is
the same run (building the models is what takes time, under a minute on 2 cores; the sequence lengths
change nothing: the slope is per token).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import ATMOST, Figure, finish, parser  # noqa: E402  (also puts the repo on sys.path)

UNDERCOUNT_TARGET = 0.98  # plan / measured, each variant
DEVIATION_TARGET = 0.05  # largest |plan / measured - 1|


def saved_bytes(model, ids, autocast: bool) -> int:
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast(
            "cpu", dtype=torch.bfloat16, enabled=autocast):
        model.model(input_ids=ids)
    return sum(seen.values())


def build(layers: int, dtype, lora_dropout: float | None):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from stages.common.qwen_shape import reference_config

    values = {k: v for k, v in reference_config(layers).items()
              if k not in ("architectures", "model_type", "bos_token_id", "eos_token_id")}
    values["vocab_size"] = 1024
    config = Qwen2Config(**values)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(dtype)
    if lora_dropout is None:
        return model
    from peft import LoraConfig, get_peft_model

    from stages.common.memory import LINEAR_NAMES

    peft_model = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, lora_dropout=lora_dropout,
                                                  target_modules=list(LINEAR_NAMES), task_type="CAUSAL_LM"))
    peft_model.enable_input_require_grads()
    return peft_model.base_model.model


def main() -> int:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, nargs=2, default=[128, 256], metavar=("SHORT", "LONG"),
                    help="the two sequence lengths (the slope between them is per token)")
    opts = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    from stages.common.memory import KNOWN_MODEL_CONFIGS, LINEAR_NAMES, ModelShape, TrainingSetup
    from stages.common.memory import _activation_bytes_per_token_layer as formula

    shape = ModelShape.from_config(KNOWN_MODEL_CONFIGS["Qwen/Qwen2.5-Math-1.5B"])
    short, long = opts.seq
    if not 0 < short < long:
        ap.error(f"--seq needs two lengths, the shorter first; got {short} {long}")
    variants = [("bf16", torch.bfloat16, False, None, {}), ("fp32", torch.float32, False, None, {"weight_dtype": "float32"}),
                ("fp32 + bf16 autocast", torch.float32, True, None, {"weight_dtype": "float32", "autocast_bf16": True}),
                ("bf16 LoRA, dropout 0.05", torch.bfloat16, False, 0.05,
                 {"use_peft": True, "lora_targets": LINEAR_NAMES, "lora_r": 64, "lora_dropout": 0.05}),
                ("bf16 LoRA, no dropout", torch.bfloat16, False, 0.0,
                 {"use_peft": True, "lora_targets": LINEAR_NAMES, "lora_r": 64, "lora_dropout": 0.0})]
    print(f"{'variant':<26}{'measured B/token/layer':>24}{'plan-memory':>14}{'ratio':>8}")
    figures, details = [], {"model": "Qwen/Qwen2.5-Math-1.5B layer shape", "seq": [short, long], "variants": {}}
    for name, dtype, autocast, dropout, setup in variants:
        measured = {}
        for layers in (1, 2):
            model = build(layers, dtype, dropout)
            for seq in (short, long):
                measured[layers, seq] = saved_bytes(model, torch.randint(0, 1000, (1, seq)), autocast)
        slope = ((measured[2, long] - measured[1, long]) - (measured[2, short] - measured[1, short])) / (long - short)
        planned = formula(shape, TrainingSetup(stage="sft", micro_batch=1, seq_len=long, **setup))
        print(f"{name:<26}{slope:>24,.0f}{planned:>14,.0f}{planned / slope:>8.2f}", flush=True)
        details["variants"][name] = {"measured_bytes": slope, "plan_bytes": planned,
                                     "saved_bytes": {f"{layers} layers, {seq} tokens": b
                                                     for (layers, seq), b in measured.items()}}
        figures.append(Figure(f"plan vs measured, {name}", planned, "B/token/layer", slope, "measured (saved tensors)",
                              target=UNDERCOUNT_TARGET))
    deviation = max(abs(f.ratio - 1) for f in figures)
    figures.append(Figure("largest |plan / measured - 1|", deviation, "", target=DEVIATION_TARGET, direction=ATMOST,
                          target_of="value"))
    return finish(opts, "activation_bytes", figures, details)


if __name__ == "__main__":
    sys.exit(main())
