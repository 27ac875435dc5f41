"""Run a module under ``accelerate launch`` with FSDP on CPU processes (gloo); test infrastructure only.

    accelerate launch --config_file accelerate_configs/fsdp2_cpu.yaml tests/fsdp_cpu_launch.py -m stages.sft ...

accelerate 1.15 turns FSDP on only for GPU-type distributed types (``AcceleratorState.__init__``, state.py
~line 986): on CPU processes an FSDP config silently trains with ``MULTI_CPU`` DDP. torch's FSDP2
(``fully_shard``) itself runs on CPU with gloo, so this switches accelerate's state to FSDP when the launch
asked for it (``ACCELERATE_USE_FSDP``), then runs the module as ``python -m`` would. It prints one line
when a model is sharded, so a test can tell FSDP2 really ran.
"""

from __future__ import annotations

import os
import runpy
import sys

from accelerate import accelerator as accelerator_module
from accelerate import state as accelerate_state
from accelerate.utils import DistributedType, fsdp_utils

_init = accelerate_state.AcceleratorState.__init__
_prepare = fsdp_utils.fsdp2_prepare_model


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and fsdp_plugin is not None
            and self.distributed_type == DistributedType.MULTI_CPU):
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        # a later AcceleratorState() copies PartialState's shared state over its own: keep FSDP there too
        accelerate_state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def _prepare_and_report(accelerator, model):
    model = _prepare(accelerator, model)
    from torch.distributed.tensor import DTensor

    sharded = sum(isinstance(p, DTensor) for p in model.parameters())
    print(f"[fsdp_cpu] rank {accelerator.process_index}: fully_shard applied, {sharded} DTensor parameters",
          file=sys.stderr, flush=True)
    return model


accelerate_state.AcceleratorState.__init__ = _fsdp_on_cpu
fsdp_utils.fsdp2_prepare_model = _prepare_and_report
accelerator_module.fsdp2_prepare_model = _prepare_and_report  # the name accelerator.py imported

if __name__ == "__main__":
    if sys.argv[1:2] != ["-m"] or len(sys.argv) < 3:
        raise SystemExit("usage: accelerate launch ... tests/fsdp_cpu_launch.py -m <module> [args ...]")
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
