"""eval.offline: lighteval runs with no network, reads the local GSM8K copy, and never returns
stale results for new weights."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from eval import offline

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_registry_loads_only_our_tasks_and_local_data_with_network_blocked(gsm8k_dir: Path):
    # a fresh interpreter with every HTTP request failing, as on a machine without network
    code = textwrap.dedent("""
        import json, sys
        import requests
        def blocked(*a, **k):
            raise requests.exceptions.ConnectionError("network blocked by the test")
        requests.Session.request = blocked
        requests.get = blocked
        from eval import offline, tasks
        from lighteval.tasks.lighteval_task import LightevalTask
        registry = offline.task_registry("gsm8k_pot|0,gsm8k_cot|0,arith_pot|0", tasks)
        loaded = registry.load_tasks()
        with offline.lighteval_patches():
            LightevalTask.load_datasets(loaded, 1)
        docs = {name: t.eval_docs() for name, t in loaded.items()}
        print(json.dumps({
            "tasks": sorted(loaded),
            "n_docs": {k: len(v) for k, v in docs.items()},
            "first_query": docs["gsm8k_pot|0"][0].query,
            "cot_query": docs["gsm8k_cot|0"][0].query,
            "cot_gold": docs["gsm8k_cot|0"][0].get_golds()[0],
            "builtin_task_modules": sorted(m for m in sys.modules if m.startswith("lighteval.tasks.tasks.")),
        }))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**_env(), "HF_HUB_OFFLINE": "1", "MATHFORGE_GSM8K_DIR": str(gsm8k_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tasks"] == ["arith_pot|0", "gsm8k_cot|0", "gsm8k_pot|0"]
    assert out["n_docs"] == {"arith_pot|0": 500, "gsm8k_cot|0": 1319, "gsm8k_pot|0": 1319}
    first = json.loads((gsm8k_dir / "test.jsonl").read_text().splitlines()[0])
    assert out["first_query"] == first["question"]
    # lighteval's standard GSM8K prompt and gold (the worked solution)
    assert out["cot_query"] == f"Question: {first['question']}\nAnswer:"
    assert out["cot_gold"] == f" {first['answer']}"
    # tiny_benchmarks (downloads at import) and the other built-in task modules were never imported;
    # only the gsm8k module whose prompt function the CoT task reuses
    assert out["builtin_task_modules"] == ["lighteval.tasks.tasks.gsm8k"]


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}


def test_versions_checked_with_a_fix(monkeypatch):
    found = offline.check_versions()
    assert set(found) == {"lighteval", "huggingface_hub", "xxhash"}
    monkeypatch.setitem(offline.REQUIRED_VERSIONS, "xxhash", ("<1", "test bound"))
    with pytest.raises(offline.OfflineSetupError, match=r"xxhash .* installed but eval needs xxhash<1.*pip install"):
        offline.check_versions()


def test_hub_reachability_honours_offline_env(monkeypatch):
    offline.hub_reachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        assert offline.hub_reachable() is False
    finally:
        offline.hub_reachable.cache_clear()


@pytest.mark.slow
def test_new_weights_at_the_same_path_are_evaluated_again(tmp_path: Path):
    from eval import gsm8k as runner
    from stages.common.tiny import DEFAULT_SIZES, build_tiny_checkpoint

    a = build_tiny_checkpoint(tmp_path / "a", seed=0, **DEFAULT_SIZES)
    b = build_tiny_checkpoint(tmp_path / "b", seed=1, **DEFAULT_SIZES)
    # At the default init the residual stream is the input embedding, so a tied-embedding model
    # repeats its last prompt token whatever its seed; larger layer weights make the two differ.
    from transformers import AutoModelForCausalLM
    for seed, folder in enumerate((a, b)):
        lm = AutoModelForCausalLM.from_pretrained(folder)
        torch.manual_seed(seed)
        for name, w in lm.named_parameters():
            if w.dim() == 2 and "embed" not in name:
                w.data.normal_(0.0, 0.5)
        lm.save_pretrained(folder)
    model = tmp_path / "model"  # a plain model folder, retrained in place
    shutil.copytree(a, model)
    args = ["--model", str(model), "--eval_sets", "arith:test:4", "--max_new_tokens", "16", "--batch_size", "4",
            "--output_dir", str(tmp_path / "results"), "--dtype", "float32"]
    first = runner.main(args)
    assert runner.main(args) == first  # unchanged weights: the same result folder
    shutil.rmtree(model)
    shutil.copytree(b, model)
    second = runner.main(args)
    assert second != first and second.parent == first.parent

    def completions(folder: Path) -> list[str]:
        return [json.loads(line)["completion"] for line in (folder / "details" / "pot_arith_test_4.jsonl").open()]

    assert completions(second) != completions(first)
    ids = [json.loads((f / "results.json").read_text())["model"]["weights_sha256"] for f in (first, second)]
    assert ids[0] != ids[1]
