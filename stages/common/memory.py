"""plan-memory: the expected peak accelerator memory of a training stage, from the model's config and the recipe.

``python -m stages.common plan-memory --config recipes/qwen2.5-math-1.5b/sft.yaml [--gpu-memory 40GiB]``
prints the estimate, term by term, and the largest micro-batch that fits. Stages call
:func:`check_memory_plan` before they load the model: a recipe that cannot fit is a warning that names
the knob to turn.

The model comes from its ``config.json`` (a local folder or checkpoint, ``--model_config``), or, for a
hub id that cannot be read offline, from :data:`KNOWN_MODEL_CONFIGS` (Qwen2.5-Math-1.5B is built in).

What is counted (bytes; P = parameters, T = tokens of one micro-batch = batch x sequence):

- weights: P x the load dtype (``dtype``); 4-bit (``load_in_4bit``, bitsandbytes NF4) linear layers take
  0.5 byte per weight plus one fp32 scale per 64 weights (embeddings and norms stay in the compute dtype);
- frozen copies of the model: GRPO / length_rl / DPO reference model (``beta > 0``, full fine-tuning; with
  LoRA the reference is the base model with the adapter off, no copy), the implicit PRM's reference, the
  PRM that scores GRPO's ``prm_bonus``;
- gradients and AdamW states: full fine-tuning keeps a gradient and two moments per weight in the weight's
  dtype (``adamw_torch(_fused)``; 8-bit optimizers: 1 byte per moment); with fp32 weights under bf16
  autocast, autocast also caches a bf16 copy of each weight during the step; LoRA trains
  r x (in + out) weights per adapted matrix, in fp32 (peft upcasts adapters), with fp32 gradients and moments;
- activations per layer and token (measured on this architecture with ``saved_tensors_hooks``, see
  docs/scaling.md): with bf16 compute ``2 * (4 I + 8 h + 2 kv) + 4 h`` bytes (I intermediate, h hidden, kv the
  key/value width), in fp32 ``4 * (4 I + 8 h + 2 kv)``; LoRA adds the fp32 copies of the adapters' inputs
  (``4 * (I + 1.4 h)``) and, with ``lora_dropout > 0``, the dropped-out inputs and their masks
  (``2 * act * (6 h + I)``). Gradient checkpointing keeps only each layer's input (``act * h``) plus one layer's
  activations while it is recomputed;
- the LM head: TRL 1.16 never materialises the logits (a chunked log-prob function); it keeps the last hidden
  states and, in the backward pass of full fine-tuning, an fp32 gradient of the (tied) embedding matrix
  before its cast, and 4096-token x 32768-vocabulary tiles. The implicit PRM does materialise them:
  :data:`FULL_LOGITS_BYTES` per token and vocabulary entry;
- GRPO: training micro-batches of ``prompt + completion`` tokens; transformers generation holds a KV cache of
  the generation batch; colocated vLLM reserves ``vllm_gpu_memory_utilization`` of the GPU; on CPU, with LoRA
  and 2-byte weights, generation's prefill copies the frozen LM head once per generated sequence
  (:func:`_prefill_head_copy_bytes`);
- on CUDA, about 1 GiB of context, cuBLAS workspace and allocator fragmentation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("mathforge.memory")

GiB = 1 << 30
MiB = 1 << 20

# config.json of models whose hub ids must be plannable offline (the reference recipes').
KNOWN_MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-Math-1.5B": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 1536,
        "initializer_range": 0.02, "intermediate_size": 8960, "max_position_embeddings": 4096,
        "max_window_layers": 21, "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    },
}

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
CUDA_OVERHEAD = GiB  # CUDA context, cuBLAS workspace, allocator fragmentation
PROMPT_TOKENS = 256  # GRPO has no prompt limit: the planned prompt length (GSM8K PoT prompts: ~150-250)
HEAD_TOKEN_TILE = 4096  # TRL's chunked log-prob tile: tokens x vocabulary columns
HEAD_VOCAB_TILE = 32768
# The implicit PRM's loss (stages.prm_lib.implicit) takes a log-softmax of the policy's full logits and runs the
# reference's: bytes per token and vocabulary entry at its peak (bf16 logits, fp32 copies, log-softmax and its
# gradient, the reference's logits), measured on CPU with bench/memory_probe.py.
FULL_LOGITS_BYTES = 32
PEFT_DEFAULT_TARGETS = ("q_proj", "v_proj")  # peft's default LoRA targets for Qwen2 / Llama
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "lion_8bit", "paged_lion_8bit")
# Stage fields (not TRL's) that the plan reads, with the stage dataclasses' defaults (tests check they agree).
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "prm": {"max_length": 512, "prm_type": "token_classification", "reweight": "none", "label_mode": "hard"},
    "grpo": {"reward_funcs": ["pot_correctness", "pot_format", "brevity"], "prm_checkpoint": None},
    "length_rl": {"reward_funcs": ["pot_correctness", "pot_format", "brevity"], "prm_checkpoint": None},
}
# The TRL / transformers config each stage wraps (its defaults fill what a recipe leaves out).
STAGE_CONFIG_CLASS = {"sft": "SFTConfig", "grpo": "GRPOConfig", "length_rl": "GRPOConfig", "evolve": "GRPOConfig",
                      "dpo": "DPOConfig", "revise": "SFTConfig", "prm": "TrainingArguments"}


class MemoryPlanError(ValueError):
    """A recipe or model config that plan-memory cannot read."""


# ---------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from a decoder-only transformer's config.json."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    dtype: str = "bfloat16"
    attention_bias: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            return cls(vocab=int(config["vocab_size"]), hidden=hidden, layers=int(config["num_hidden_layers"]),
                       heads=heads, kv_heads=int(config.get("num_key_value_heads") or heads),
                       head_dim=int(config.get("head_dim") or hidden // heads),
                       intermediate=int(config["intermediate_size"]),
                       tied=bool(config.get("tie_word_embeddings", False)),
                       dtype=str(config.get("torch_dtype") or config.get("dtype") or "float32"),
                       attention_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")))
        except KeyError as e:
            raise MemoryPlanError(f"model config has no {e.args[0]!r}: not a decoder-only transformer config") from e

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        h, q, kv, inter = self.hidden, self.heads * self.head_dim, self.kv_width, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}

    @property
    def layer_linear_params(self) -> int:
        return sum(i * o for i, o in self.linear_shapes().values())

    @property
    def layer_params(self) -> int:
        bias = (self.heads * self.head_dim + 2 * self.kv_width) if self.attention_bias else 0
        return self.layer_linear_params + bias + 2 * self.hidden  # + two RMSNorm weights

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        head = 0 if self.tied else self.embedding_params
        return self.embedding_params + head + self.layers * self.layer_params + self.hidden


def read_model_config(spec: str) -> dict[str, Any]:
    """config.json of a local folder or checkpoint (its ``latest``), or a known hub id's built-in copy."""
    path = Path(spec)
    if path.is_file() and path.name.endswith(".json"):
        return json.loads(path.read_text())
    for folder in (path, path / "latest", path / "merged"):
        if (folder / "config.json").is_file():
            return json.loads((folder / "config.json").read_text())
    if (path / "adapter_config.json").is_file():  # a LoRA adapter folder: plan its base model
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if base:
            return read_model_config(base)
    if spec in KNOWN_MODEL_CONFIGS:
        return dict(KNOWN_MODEL_CONFIGS[spec])
    raise MemoryPlanError(f"cannot read the model config of '{spec}': not a folder with config.json nor one of "
                          f"{sorted(KNOWN_MODEL_CONFIGS)}; pass --model_config <folder or config.json>")


# ---------------------------------------------------------------------------------------------
# the training set-up


@dataclass
class TrainingSetup:
    """What the plan needs from a stage's recipe."""

    stage: str
    micro_batch: int
    seq_len: int  # tokens of one training sequence (prompt + completion)
    weight_dtype: str = "bfloat16"
    autocast_bf16: bool = False  # fp32 weights under bf16 autocast (``dtype: float32`` with ``bf16: true``)
    gradient_checkpointing: bool = False
    use_peft: bool = False
    lora_r: int = 16
    lora_targets: tuple[str, ...] = PEFT_DEFAULT_TARGETS
    lora_dropout: float = 0.05
    load_in_4bit: bool = False
    optimizer: str = "adamw_torch_fused"
    head: str = "lm"  # lm (TRL's chunked log-prob head) | full_logits (implicit PRM) | classifier
    frozen_copies: int = 0  # frozen models of the same shape (reference models)
    frozen_copy_notes: list[str] = field(default_factory=list)
    generation_batch: int = 0  # GRPO with transformers generation: sequences generated at once
    vllm_fraction: float = 0.0  # colocated vLLM's share of the GPU
    device: str = "cuda"


def _yaml_load(path: Path) -> dict[str, Any]:
    import yaml  # deferred: only plan-memory reads recipes itself

    if not path.is_file():
        raise MemoryPlanError(f"recipe '{path}' does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise MemoryPlanError(f"{path}: a recipe must be a YAML mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _yaml_load((path.parent / str(base)).resolve())
    merged.update(data)
    return merged


def _override_values(overrides: list[str]) -> dict[str, Any]:
    """``--key value [value ...]`` pairs (values read as YAML, like TrlParser's recipe values; several
    values make a list, ``--key`` alone is true)."""
    import yaml  # deferred: only plan-memory reads recipes itself

    values: dict[str, Any] = {}
    i = 0
    while i < len(overrides):
        key = overrides[i]
        if not key.startswith("--"):
            raise MemoryPlanError(f"override '{key}' is not --key value")
        name, _, inline = key[2:].partition("=")
        i += 1
        raw = [inline] if inline else []
        while not inline and i < len(overrides) and not overrides[i].startswith("--"):
            raw.append(overrides[i])
            i += 1
        parsed = [yaml.safe_load(r) for r in raw]
        values[name] = True if not parsed else parsed[0] if len(parsed) == 1 else parsed
    return values


def _config_defaults(stage: str) -> dict[str, Any]:
    """Field defaults of the TRL / transformers config the stage wraps, and of TRL's ModelConfig."""
    import transformers  # deferred: heavy
    import trl  # deferred: heavy

    names = [STAGE_CONFIG_CLASS.get(stage, "TrainingArguments"), "ModelConfig"]
    out: dict[str, Any] = {}
    for name in names:
        cls = getattr(trl, name, None) or getattr(transformers, name)
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out.setdefault(f.name, f.default)
            elif f.default_factory is not dataclasses.MISSING:
                out.setdefault(f.name, f.default_factory())
    return out


def recipe_values(recipe: str | Path, overrides: list[str] = (), stage: str | None = None) -> tuple[str, dict]:
    """The stage name and the recipe's values (``base:`` chain, ``--key value`` overrides, then the
    wrapped configs' defaults for what it leaves out)."""
    path = Path(recipe)
    stage = stage or path.stem
    values = {**STAGE_DEFAULTS.get(stage, {}), **_config_defaults(stage)}
    values.update(_yaml_load(path))
    values.update(_override_values(list(overrides)))
    return stage, values


def _head(stage: str, values: dict[str, Any]) -> str:
    if stage != "prm":
        return "lm"
    return "full_logits" if values.get("prm_type") == "implicit" else "classifier"


def setup_from_values(stage: str, values: dict[str, Any], shape: ModelShape, *, device: str = "cuda",
                      micro_batch: int | None = None, seq_len: int | None = None,
                      prompt_tokens: int = PROMPT_TOKENS) -> TrainingSetup:
    dtype = values.get("dtype") or "auto"
    if dtype == "auto":
        dtype = shape.dtype
    if dtype not in DTYPE_BYTES:
        raise MemoryPlanError(f"dtype {dtype!r} is not one of {sorted(DTYPE_BYTES)}")
    bf16 = values.get("bf16")
    bf16 = (device == "cuda") if bf16 is None else bool(bf16)
    use_peft = bool(values.get("use_peft"))
    rl = stage in ("grpo", "length_rl", "evolve")
    if rl:
        completion = int(values.get("max_completion_length") or 256)
        tokens = prompt_tokens + completion
    else:
        tokens = int(values.get("max_length") or 1024)
    batch = int(values.get("per_device_train_batch_size") or 8)
    frozen, notes = 0, []
    beta = float(values.get("beta") or 0.0)
    if (rl or stage == "dpo") and (beta > 0 or stage == "dpo") and not use_peft:
        frozen += 1
        notes.append(f"reference model (beta={beta})" if rl else "reference model (DPO)")
    if stage == "prm" and values.get("prm_type") == "implicit":
        frozen += 1
        notes.append("implicit PRM's frozen reference")
    if rl and "prm_bonus" in (values.get("reward_funcs") or []) and values.get("prm_checkpoint"):
        frozen += 1
        notes.append("PRM scoring the prm_bonus (same shape)")
    use_vllm = rl and bool(values.get("use_vllm"))
    vllm_fraction = float(values.get("vllm_gpu_memory_utilization") or 0.3) if (
        use_vllm and values.get("vllm_mode", "colocate") == "colocate") else 0.0
    gen_batch = 0
    if rl and not use_vllm:
        steps = values.get("steps_per_generation") or values.get("gradient_accumulation_steps") or 1
        gen_batch = int(values.get("generation_batch_size") or batch * int(steps))
    targets = values.get("lora_target_modules") or PEFT_DEFAULT_TARGETS
    if isinstance(targets, str):
        targets = LINEAR_NAMES if targets == "all-linear" else (targets,)
    # transformers 5 names it activation_checkpointing (gradient_checkpointing is its deprecated alias)
    gc = values.get("activation_checkpointing")
    if gc is None:
        gc = values.get("gradient_checkpointing")
    return TrainingSetup(
        stage=stage, micro_batch=micro_batch or batch, seq_len=seq_len or tokens, weight_dtype=dtype,
        autocast_bf16=bf16 and DTYPE_BYTES[dtype] == 4, gradient_checkpointing=bool(gc),
        use_peft=use_peft, lora_r=int(values.get("lora_r") or 16), lora_targets=tuple(targets),
        lora_dropout=float(values.get("lora_dropout") or 0.0), load_in_4bit=bool(values.get("load_in_4bit")),
        optimizer=str(values.get("optim") or "adamw_torch_fused"),
        head=_head(stage, values),
        frozen_copies=frozen, frozen_copy_notes=notes, generation_batch=gen_batch, vllm_fraction=vllm_fraction,
        device=device)


# ---------------------------------------------------------------------------------------------
# the plan


@dataclass
class MemoryPlan:
    stage: str
    model: str
    shape: ModelShape
    setup: TrainingSetup
    components: dict[str, int]
    budget: int | None = None
    largest_micro_batch: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.total <= self.budget

    def knobs(self) -> list[str]:
        """What to turn, most effective first, when the plan does not fit."""
        s = self.setup
        out = []
        if self.largest_micro_batch and self.largest_micro_batch < s.micro_batch:
            out.append(f"per_device_train_batch_size: {self.largest_micro_batch} (with gradient_accumulation_steps "
                       f"x{math.ceil(s.micro_batch / self.largest_micro_batch)} for the same batch)")
        if not s.gradient_checkpointing:
            out.append("activation_checkpointing: true")
        if not s.use_peft:
            out.append("use_peft: true (LoRA)")
        elif not s.load_in_4bit:
            out.append("load_in_4bit: true (QLoRA)")
        if s.vllm_fraction:
            out.append(f"vllm_gpu_memory_utilization below {s.vllm_fraction} or vllm_mode: server (trl vllm-serve on "
                       "another GPU)")
        if s.frozen_copies and s.stage in ("grpo", "length_rl", "evolve"):
            out.append("beta: 0.0 (no reference model) or use_peft: true (the reference is the adapter-free base)")
        out.append("max_completion_length" if s.stage in ("grpo", "length_rl", "evolve") else "max_length")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "model": self.model, "total_bytes": self.total,
                "total_gib": round(self.total / GiB, 2), "components_bytes": self.components,
                "micro_batch": self.setup.micro_batch, "seq_len": self.setup.seq_len, "budget_bytes": self.budget,
                "fits": self.fits, "largest_micro_batch": self.largest_micro_batch,
                "knobs": self.knobs() if self.fits is False else [], "notes": self.notes,
                "setup": dataclasses.asdict(self.setup), "params": self.shape.params}

    def render(self) -> str:
        s = self.setup
        lines = [f"plan-memory: stage {self.stage}, model {self.model} ({self.shape.params / 1e9:.2f}B params, "
                 f"{s.weight_dtype}{' + bf16 autocast' if s.autocast_bf16 else ''}"
                 f"{', LoRA r=' + str(s.lora_r) if s.use_peft else ''}{', 4-bit' if s.load_in_4bit else ''}), "
                 f"micro-batch {s.micro_batch} x {s.seq_len} tokens, gradient checkpointing "
                 f"{'on' if s.gradient_checkpointing else 'off'}, device {s.device}"]
        width = max(len(k) for k in self.components)
        for name, value in self.components.items():
            if value:
                lines.append(f"  {name:<{width}}  {value / GiB:8.2f} GiB")
        lines.append(f"  {'total':<{width}}  {self.total / GiB:8.2f} GiB")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.budget is not None:
            verdict = "fits" if self.fits else "DOES NOT FIT"
            lines.append(f"budget {self.budget / GiB:.1f} GiB: {verdict}; largest micro-batch that fits: "
                         f"{self.largest_micro_batch if self.largest_micro_batch else 'none (even 1 does not fit)'}")
            if not self.fits:
                lines.append("turn: " + "; ".join(self.knobs()))
        return "\n".join(lines)


def _activation_bytes_per_token_layer(shape: ModelShape, s: TrainingSetup) -> float:
    """Saved activations of one decoder layer per token, without checkpointing (see the module doc)."""
    h, inter, kv = shape.hidden, shape.intermediate, shape.kv_width
    act = 2 if (s.autocast_bf16 or DTYPE_BYTES[s.weight_dtype] == 2 or s.load_in_4bit) else 4
    if act == 2:
        per = 2 * (4 * inter + 8 * h + 2 * kv) + 4 * h
        if s.autocast_bf16:
            per += 10 * h  # fp32 residual stream and norms around the bf16 matmuls
    else:
        per = 4 * (4 * inter + 8 * h + 2 * kv)
    per += 4 * shape.heads  # attention log-sum-exp
    if s.use_peft:
        per += 4 * (inter + 1.4 * h)  # adapters' fp32 input copies
        if s.lora_dropout > 0:
            shapes = shape.linear_shapes()
            dropped = sum(shapes[n][0] for n in s.lora_targets if n in shapes)
            per += 2 * act * dropped  # dropout outputs and masks
    return per


def _prefill_head_copy_bytes(shape: ModelShape, s: TrainingSetup) -> int:
    """Copies of the LM head that transformers generation makes in its prefill on CPU with a frozen head.

    The prefill projects only the last position through the LM head: ``hidden[:, -1:]``, a view whose batch
    stride is the prompt's, which ``torch.matmul`` cannot fold into one matrix. When the head's weight requires
    grad (full fine-tuning) matmul folds anyway; when it does not (LoRA: the base model is frozen, and the head is
    never an adapter target here), matmul takes the bmm path, expands the transposed weight to (generation batch,
    hidden, vocab), and the CPU bmm of 2-byte dtypes makes that contiguous: one copy of the weight per sequence
    of the generation batch, held for the length of the call. fp32 weights (also under bf16 autocast: generation
    runs without it) fold into one mm, no copy. On CUDA, cuBLAS reads the expanded weight in place (batch stride
    0): not counted there.

    Measured on CPU: bench/memory_probe.py --timeline on the reference shape's length_rl with LoRA (generation
    batch 4): +1.74 GiB inside the prefill's ``lm_head`` call, where the torch profiler shows ``aten::bmm`` making a
    [4, 1536, 151936] bf16 tensor contiguous (18 s); ``F.linear`` alone on a ``[:, -1:]`` slice: copies = batch in
    bf16 and fp16, none in fp32, none when the weight requires grad or the input is one token long."""
    if not s.generation_batch or s.device == "cuda" or not s.use_peft or s.head != "lm":
        return 0
    if DTYPE_BYTES[s.weight_dtype] != 2 and not s.load_in_4bit:  # 4-bit keeps the head in bf16
        return 0
    return s.generation_batch * shape.embedding_params * 2


def plan_memory(shape: ModelShape, s: TrainingSetup, *, model: str = "", budget: int | None = None,
                search_batch: bool = True) -> MemoryPlan:
    """The expected peak of one training step (see the module doc for each term)."""
    wbytes = DTYPE_BYTES[s.weight_dtype]
    act = 2 if (s.autocast_bf16 or wbytes == 2 or s.load_in_4bit) else 4
    linear = shape.layers * shape.layer_linear_params
    other = shape.params - linear
    if s.load_in_4bit:
        weights = int(linear * (0.5 + 4 / 64)) + other * 2
    else:
        weights = shape.params * wbytes
    comp: dict[str, int] = {"weights": weights}
    notes: list[str] = []
    comp["frozen copies"] = s.frozen_copies * weights
    if s.frozen_copy_notes:
        notes.append("frozen copies: " + ", ".join(s.frozen_copy_notes))
    if s.use_peft:
        shapes = shape.linear_shapes()
        trainable = shape.layers * sum(s.lora_r * (shapes[n][0] + shapes[n][1]) for n in s.lora_targets if n in shapes)
        if s.head == "classifier":
            trainable += shape.hidden * 3  # the token-classification head is trained in full
        comp["gradients"] = trainable * 4
        comp["optimizer states"] = trainable * 8
        head_grad = 0
    else:
        trainable = shape.params
        grad_bytes = 4 if s.autocast_bf16 else wbytes
        moment = 1 if s.optimizer in EIGHT_BIT_OPTIMIZERS else grad_bytes
        comp["gradients"] = trainable * grad_bytes
        comp["optimizer states"] = trainable * 2 * moment
        if s.autocast_bf16:
            comp["autocast weight cache"] = (linear + shape.embedding_params) * 2
        # the LM head's backward accumulates the (tied) embedding's gradient in fp32 before its cast
        head_grad = shape.embedding_params * 4 if s.head in ("lm", "full_logits") and grad_bytes < 4 else 0
    notes.append(f"trainable parameters: {trainable / 1e6:.1f}M")
    head_copies = _prefill_head_copy_bytes(shape, s)
    if head_copies:
        notes.append(f"generation's prefill copies the frozen LM head once per sequence on CPU "
                     f"({s.generation_batch} x {head_copies / s.generation_batch / GiB:.2f} GiB); the component is "
                     "what that adds beyond the training step's own peak")

    def dynamic(batch: int) -> dict[str, int]:
        tokens = batch * s.seq_len
        per_layer = _activation_bytes_per_token_layer(shape, s)
        if s.gradient_checkpointing:
            acts = tokens * (shape.layers * act * shape.hidden + per_layer)
        else:
            acts = tokens * shape.layers * per_layer
        acts += tokens * (4 + act) * shape.hidden  # embedding output and final norm
        if s.head == "lm":
            tile = min(tokens, HEAD_TOKEN_TILE) * min(shape.vocab, HEAD_VOCAB_TILE)
            # kept hidden states + fp32 hidden gradient, and the tile; off CUDA the tile's log-softmax runs as torch
            # ops with about six fp32 temporaries of its size (measured), on CUDA in a Triton kernel
            head = tokens * shape.hidden * (act + 4) + tile * (act + (0 if s.device == "cuda" else 6 * 4))
        elif s.head == "full_logits":
            head = tokens * shape.vocab * FULL_LOGITS_BYTES
        else:
            head = tokens * shape.hidden * (act + 4)
        gen = 0
        if s.generation_batch:
            kv_cache = s.generation_batch * s.seq_len * shape.layers * 2 * shape.kv_width * act
            gen = kv_cache + s.generation_batch * shape.vocab * 4 * 2  # last-token logits and sampling probs
        train = acts + head + head_grad
        # generation and the training step do not overlap: what generation holds beyond the step's own peak
        out = {"activations": int(acts), "LM head / loss": int(head + head_grad),
               "generation (KV cache)": int(max(0, gen - train))}
        if head_copies:  # the prefill's copies of the frozen LM head (CPU), on top of the KV cache
            out["generation: LM head copies (CPU prefill)"] = int(max(0, gen + head_copies - train)
                                                                   - max(0, gen - train))
        return out

    comp.update(dynamic(s.micro_batch))
    if s.vllm_fraction:
        notes.append(f"vLLM colocated: {s.vllm_fraction:.0%} of the GPU is vLLM's (weights, KV cache)")
    if s.device == "cuda":
        comp["CUDA context and fragmentation"] = CUDA_OVERHEAD
    plan = MemoryPlan(stage=s.stage, model=model, shape=shape, setup=s, components=comp, budget=budget, notes=notes)
    if budget is not None:
        if s.vllm_fraction:
            comp["vLLM (colocated)"] = int(s.vllm_fraction * budget)
        if search_batch:
            plan.largest_micro_batch = _largest_batch(plan, dynamic)
    return plan


def _largest_batch(plan: MemoryPlan, dynamic) -> int | None:
    fixed = plan.total - sum(dynamic(plan.setup.micro_batch).values())
    best = None
    batch = 1
    while batch <= 4096:
        if fixed + sum(dynamic(batch).values()) > plan.budget:
            break
        best = batch
        batch += 1 if batch < 16 else batch // 4
    return best


def parse_size(text: str | int | float) -> int:
    """``40GiB``, ``40 GB``, ``80G``, ``512MiB`` or a number of bytes."""
    if isinstance(text, int | float):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise MemoryPlanError(f"'{text}' is not a memory size like 40GiB, 80GB or 512MiB")
    value, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    power = "KMGT".index(unit) + 1 if unit else 0
    return int(value * ((1024 if binary or unit else 1) ** power))


def plan_for_recipe(recipe: str | Path, overrides: list[str] = (), *, model_config: str | None = None,
                    gpu_memory: str | int | None = None, device: str = "cuda", stage: str | None = None,
                    micro_batch: int | None = None, seq_len: int | None = None,
                    prompt_tokens: int = PROMPT_TOKENS) -> MemoryPlan:
    """plan-memory for a recipe file with ``--key value`` overrides."""
    stage, values = recipe_values(recipe, overrides, stage)
    model = str(model_config or values.get("model_name_or_path") or "")
    if not model or model.startswith("@") and model_config is None:
        raise MemoryPlanError(f"{recipe}: model_name_or_path is {model or 'missing'!r}; pass --model_config with a "
                              f"folder, a config.json or one of {sorted(KNOWN_MODEL_CONFIGS)}")
    shape = ModelShape.from_config(read_model_config(model))
    setup = setup_from_values(stage, values, shape, device=device, micro_batch=micro_batch, seq_len=seq_len,
                              prompt_tokens=prompt_tokens)
    budget = parse_size(gpu_memory) if gpu_memory is not None else None
    return plan_memory(shape, setup, model=model, budget=budget)


def check_memory_plan(stage: str, values: dict[str, Any], model_path: str, *, budget: int | None = None,
                      device: str | None = None, logger: logging.Logger | None = None) -> MemoryPlan | None:
    """The hook a stage calls before it loads its model: plan the step and warn, naming the knobs to turn,
    when it will not fit the device's memory (``budget``; default: the free memory of CUDA device 0).
    ``values``: the stage's resolved config as one flat mapping (its dataclasses' fields). Returns the
    plan, or None when there is no budget to check (no GPU) or the model config cannot be read."""
    logger = logger or log
    if budget is None:
        import torch  # deferred: heavy

        if not torch.cuda.is_available():
            return None
        budget = torch.cuda.mem_get_info(0)[1]
        device = device or "cuda"
    try:
        shape = ModelShape.from_config(read_model_config(model_path))
        merged = {**STAGE_DEFAULTS.get(stage, {}), **values}
        plan = plan_memory(shape, setup_from_values(stage, merged, shape, device=device or "cuda"), model=model_path,
                           budget=budget)
    except MemoryPlanError as e:
        logger.info("plan-memory skipped: %s", e)
        return None
    if plan.fits is False:
        logger.warning("plan-memory: %s needs about %.1f GiB at per_device_train_batch_size %d, more than the %.1f "
                       "GiB available; turn: %s", stage, plan.total / GiB, plan.setup.micro_batch, budget / GiB,
                       "; ".join(plan.knobs()))
    return plan


def flat_values(*configs: Any) -> dict[str, Any]:
    """The fields of a stage's parsed dataclasses as one mapping (later configs win), for check_memory_plan."""
    out: dict[str, Any] = {}
    for cfg in configs:
        if cfg is not None and dataclasses.is_dataclass(cfg):
            out.update({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m stages.common plan-memory --config RECIPE [--gpu-memory 40GiB] [--model_config DIR] [-- --key value]``"""
    parser = argparse.ArgumentParser(prog="python -m stages.common plan-memory",
                                     description="Expected peak GPU memory of a training stage, from the recipe and "
                                                 "the model's config.json.")
    parser.add_argument("--config", required=True, help="the stage's recipe (its file name names the stage)")
    parser.add_argument("--stage", default=None, help="the stage, when the recipe's file name does not say it")
    parser.add_argument("--gpu-memory", default=None, help="memory of one GPU, e.g. 40GiB (A100 40GB), 80GiB")
    parser.add_argument("--model_config", default=None,
                        help="a model folder or config.json (default: the recipe's model_name_or_path)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--seq-len", type=int, default=None, help="plan this many tokens per sequence instead of "
                                                                   "max_length (or prompt + max_completion_length)")
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS, help="GRPO prompt length to plan")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args, overrides = parser.parse_known_args(argv)
    overrides = [o for o in overrides if o != "--"]
    try:
        plan = plan_for_recipe(args.config, overrides, model_config=args.model_config, gpu_memory=args.gpu_memory,
                               device=args.device, stage=args.stage, seq_len=args.seq_len,
                               prompt_tokens=args.prompt_tokens)
    except MemoryPlanError as e:
        print(f"plan-memory: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_json(), indent=2, default=str) if args.json else plan.render())
    return 0 if plan.fits is not False else 1
