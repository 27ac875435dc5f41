"""Model and tokenizer loading for every stage: hub ids, local folders and stage checkpoints.

``model_name_or_path`` in a recipe (``trl.ModelConfig``) may be a hub id (``Qwen/Qwen2.5-Math-1.5B``),
a local HF folder, a stage checkpoint (``runs/<run>/sft`` or ``runs/<run>/sft/v2``) or ``tiny``, the
embedded default model, which is built once per run into ``runs/<run>/base/`` as an ordinary
checkpoint. dtype, attention implementation, quantization (QLoRA through bitsandbytes) and LoRA
(through peft) come from ``ModelConfig``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from stages.common.checkpoint import Parent, StageLock, checkpoint_key, open_stage, resolve_parent, stage_ref
from stages.common.config import ConfigError

log = logging.getLogger(__name__)

TINY = "tiny"


def materialize_parent(spec: str, run_dir: str | Path, *, is_main: bool = True, seed: int = 0,
                       dry_run: bool = False) -> Parent:
    """Resolve ``spec`` to a parent: ``tiny`` builds the embedded model as ``<run>/base/vN``;
    ``@<stage>`` is the latest checkpoint of that stage in this run; anything else goes to
    :func:`resolve_parent` (a checkpoint, a local folder or a hub id)."""
    if spec.startswith("@"):
        return resolve_parent(stage_ref(spec, run_dir))
    if spec != TINY:
        return resolve_parent(spec)
    from stages.common import tiny  # deferred: imports torch and transformers

    key = checkpoint_key(config={"builder": "tiny", "sizes": tiny.DEFAULT_SIZES, "seed": seed}, parent=None,
                         inputs=[], seed=seed)
    if dry_run:
        ckpt = open_stage(run_dir, "base", key, is_main=False)
        if ckpt.status != "done":
            return Parent(spec, str(ckpt.final_dir), "tiny (would be built)")
    elif is_main:
        with StageLock(Path(run_dir) / "base", label="base"):  # two stages starting at once build it once
            ckpt = open_stage(run_dir, "base", key, is_main=True)
            if ckpt.status != "done":
                tiny.build_tiny_checkpoint(ckpt.partial_dir / "model", seed=seed, **tiny.DEFAULT_SIZES)
                _move_model_files(ckpt.partial_dir / "model", ckpt.partial_dir)
                ckpt.finalize(metrics={}, extra={"note": "embedded tiny Qwen2 model and byte-level BPE tokenizer"})
    _wait_for_main()  # every rank passes this barrier once, the main process after building
    if not is_main:
        ckpt = open_stage(run_dir, "base", key, is_main=False)
    return resolve_parent(str(ckpt.final_dir))


def _move_model_files(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        f.replace(dst / f.name)
    src.rmdir()


def _wait_for_main() -> None:
    from accelerate import PartialState  # deferred: heavy import

    state = PartialState()
    if state.num_processes > 1:
        state.wait_for_everyone()


def load_tokenizer(path: str, *, padding_side: str = "left", revision: str | None = None):
    """The parent's tokenizer, with a pad token (generation pads on the left)."""
    from transformers import AutoTokenizer  # deferred: heavy import

    tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


FLASH_ATTENTION = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def check_device_support(model_args: Any = None, training_args: Any = None, *, cuda: bool | None = None) -> None:
    """A config that asks for a GPU-only feature on a machine without one (or without the feature's
    package) is a :class:`ConfigError` naming the key, not a stack trace deep inside the loading code:
    ``attn_implementation: flash_attention_2``, ``load_in_4bit`` / ``load_in_8bit`` (bitsandbytes) and a
    DeepSpeed config (``deepspeed:`` in the recipe, or an ``accelerate launch`` with a ZeRO config).
    Model loading calls it; a stage may call it earlier, right after parsing."""
    if cuda is None:
        import torch  # deferred: heavy

        cuda = torch.cuda.is_available()
    where = "this machine has no CUDA GPU"
    attn = getattr(model_args, "attn_implementation", None)
    if attn in FLASH_ATTENTION:
        if not cuda:
            raise ConfigError(f"attn_implementation: {attn} needs a CUDA GPU and {where}; use "
                              "attn_implementation: sdpa (or eager)")
        if importlib.util.find_spec(FLASH_ATTENTION[attn]) is None:
            raise ConfigError(f"attn_implementation: {attn} needs the {FLASH_ATTENTION[attn]} package (the [gpu] "
                              "extra: pip install -e '.[gpu]'), which is not installed; or use sdpa")
    for key in ("load_in_4bit", "load_in_8bit"):
        if getattr(model_args, key, False):
            if not cuda:
                raise ConfigError(f"{key}: true (bitsandbytes quantization, QLoRA) needs a CUDA GPU and {where}; set "
                                  f"{key}: false (LoRA alone: use_peft: true)")
            if importlib.util.find_spec("bitsandbytes") is None:
                raise ConfigError(f"{key}: true needs the bitsandbytes package (the [gpu] extra), which is not installed")
    deepspeed = getattr(training_args, "deepspeed", None)
    launched = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if deepspeed or launched:
        key = "deepspeed (the recipe's DeepSpeed config)" if deepspeed else (
            "the accelerate config's distributed_type: DEEPSPEED (accelerate_configs/zero2.yaml, zero3.yaml)")
        if not cuda:
            raise ConfigError(f"{key} needs CUDA GPUs and {where}; on CPU launch with accelerate_configs/cpu.yaml")
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(f"{key} needs the deepspeed package (the [gpu] extra), which is not installed")


def model_kwargs(model_args: Any, *, device_map: Any = None) -> dict:
    """from_pretrained keyword arguments from a ``trl.ModelConfig`` (dtype, attention, quantization),
    after :func:`check_device_support`."""
    import torch  # deferred: heavy import
    from trl.trainer.utils import get_quantization_config  # deferred: heavy import

    check_device_support(model_args)
    dtype = getattr(model_args, "dtype", None) or "auto"
    if dtype not in ("auto", None):
        dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "revision": getattr(model_args, "model_revision", "main"),
                              "trust_remote_code": bool(getattr(model_args, "trust_remote_code", False))}
    if getattr(model_args, "attn_implementation", None):
        kwargs["attn_implementation"] = model_args.attn_implementation
    quant = get_quantization_config(model_args)
    if quant is not None:
        from accelerate import PartialState  # deferred: heavy import

        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": PartialState().local_process_index}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    return kwargs


def load_causal_lm(path: str, model_args: Any = None, **overrides):
    """A causal LM from a hub id, folder or checkpoint; a PEFT adapter folder is loaded on its base
    model and merged, so that later stages always start from plain weights."""
    from transformers import AutoModelForCausalLM  # deferred: heavy import

    kwargs = model_kwargs(model_args) if model_args is not None else {"dtype": "auto"}
    kwargs.update(overrides)
    if (Path(path) / "adapter_config.json").exists() and not (Path(path) / "config.json").exists():
        from peft import AutoPeftModelForCausalLM  # deferred: heavy import

        return AutoPeftModelForCausalLM.from_pretrained(path, **kwargs).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def peft_config(model_args: Any, task_type: str | None = None):
    """LoRA config from ``ModelConfig`` (``use_peft``), or None."""
    from trl.trainer.utils import get_peft_config  # deferred: heavy import

    cfg = get_peft_config(model_args)
    if cfg is not None and task_type is not None:
        cfg.task_type = task_type
    return cfg


def full_state_dict(trainer) -> dict | None:
    """Call on every rank after training: the full state dict of a sharded model (FSDP, DeepSpeed ZeRO-3),
    gathered from the shards (a collective), for the main process to pass to :func:`save_policy`; None when
    the model is whole on each rank (DDP, one process), which saves as it is."""
    from accelerate.utils import DistributedType  # deferred: heavy

    accelerator = trainer.accelerator
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        if accelerator.state.deepspeed_plugin.zero_stage != 3:
            return None
    elif accelerator.distributed_type != DistributedType.FSDP:
        return None
    return accelerator.get_state_dict(trainer.model_wrapped)


def _without_tied_output(model, state_dict: dict) -> dict:
    """A gathered state dict holds the tied output embedding as its own copy: leave it out, as
    ``save_pretrained`` does for the model's own (shared) tensors."""
    config = getattr(model, "config", None)
    if not getattr(config, "tie_word_embeddings", False) or not hasattr(model, "get_output_embeddings"):
        return state_dict
    head = model.get_output_embeddings()
    tied = {f"{name}.weight" for name, module in model.named_modules() if module is head}
    return {k: v for k, v in state_dict.items() if k not in tied}


def save_policy(model, tokenizer, out: Path, export_merged: bool = False, state_dict: dict | None = None) -> None:
    """A trained policy's full weights, or its PEFT adapter (plus merged full weights in
    ``merged/`` on request), with the tokenizer set for generation (left padding). A sharded model
    (FSDP, ZeRO-3) needs ``state_dict`` from :func:`full_state_dict`."""
    if state_dict is not None:
        state_dict = _without_tied_output(model, state_dict)
    model.save_pretrained(out, state_dict=state_dict)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out)
    if export_merged and hasattr(model, "merge_and_unload"):
        merged = model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
