"""lighteval's offline pitfalls, handled in one place so that evaluation runs with no network.

lighteval 0.13 has three habits that break (or silently mislead) an offline evaluation:

1. ``Registry.load_all_task_configs`` imports every built-in task module before it looks at the
   custom ones, and ``lighteval/tasks/tasks/tiny_benchmarks.py`` downloads a pickle from GitHub
   with ``requests.get`` (no timeout) while being imported: offline this raises a
   ``ConnectionError`` (or hangs where packets are dropped), and the imports cost ~15 s of CPU.
   :func:`lighteval_patches` makes the registry load only the custom task module we pass.
2. Task datasets come from ``datasets.load_dataset(hf_repo)``, i.e. the hub. Tasks of
   ``eval.tasks`` name a pseudo repository registered in :data:`LOCAL_DATASETS` and are built
   locally (GSM8K from ``stages.common.data``: the ../shared copy, or ``openai/gsm8k`` from the
   hub when there is no local copy; the embedded arithmetic task; any Problem jsonl).
3. Its generation cache (``SampleCache``) is keyed by the model *config* (name, generation
   parameters), not the weights: re-evaluating a retrained checkpoint at the same path returns the
   old generations. :class:`NoSampleCache` is what our model (``eval.model``) carries instead: no
   lighteval cache at all; eval results are reused only through ``eval.results``, keyed by the
   checkpoint's manifest sha256 (or the weights' sha256) and the eval config hash.

Plus the package bounds lighteval needs to import offline (``huggingface_hub<2``, ``xxhash<4``),
checked by :func:`check_versions` with a message that says what to install.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import Any

from packaging.specifiers import SpecifierSet

# package -> (specifier, why); mirrors pyproject.toml
REQUIRED_VERSIONS: dict[str, tuple[str, str]] = {
    "lighteval": (">=0.13,<0.14", "eval.tasks targets lighteval 0.13's task and metric API"),
    "huggingface_hub": ("<2", "lighteval 0.13 imports names that huggingface_hub 2 removed"),
    "xxhash": ("<4", "the datasets/lighteval pair installed with lighteval 0.13 needs xxhash<4"),
}

# pseudo hub repository -> builder of its DatasetDict (filled by eval.tasks)
LOCAL_DATASETS: dict[str, Callable[[], Any]] = {}

HUB_HOST = "huggingface.co"


class OfflineSetupError(RuntimeError):
    """The environment cannot run lighteval offline (a package out of bounds)."""


def check_versions() -> dict[str, str]:
    """Installed versions of the packages in :data:`REQUIRED_VERSIONS`; raises when one is out of
    bounds, naming the package, the bound and the install line."""
    found: dict[str, str] = {}
    problems = []
    for name, (spec, why) in REQUIRED_VERSIONS.items():
        try:
            v = version(name)
        except PackageNotFoundError:
            problems.append(f"{name} is not installed (need {name}{spec}: {why})")
            continue
        found[name] = v
        if v not in SpecifierSet(spec):
            problems.append(f"{name} {v} is installed but eval needs {name}{spec} ({why})")
    if problems:
        fix = " ".join(f"'{n}{s}'" for n, (s, _) in REQUIRED_VERSIONS.items())
        raise OfflineSetupError("; ".join(problems) + f". Fix: pip install {fix}")
    return found


@lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 2.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (False when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def configure_offline() -> bool:
    """Put huggingface_hub, datasets and transformers in offline mode when the hub is unreachable,
    so nothing waits on network timeouts. Must run before those packages are imported (they read
    the variables at import); returns whether the hub is reachable."""
    online = hub_reachable()
    if not online:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(var, "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return online


class NoSampleCache:
    """Stands where lighteval's ``SampleCache`` would: ``Pipeline`` calls ``_init_registry`` on the
    model's ``_cache``; nothing is ever stored or looked up, so no stale generation can return."""
    def _init_registry(self, registry: Any) -> None:
        self.registry = registry


def _load_only_custom(custom_tasks: Any = None, load_multilingual: bool = False) -> dict:
    from lighteval.tasks.registry import Registry  # deferred: heavy import

    if custom_tasks is None:
        return {}
    module = Registry.create_custom_tasks_module(custom_tasks)
    return Registry._extract_configs(module)


def _download_local_first(task: Any) -> Any:
    builder = LOCAL_DATASETS.get(task.dataset_path)
    if builder is not None:
        return builder()
    return _ORIGINAL_DOWNLOAD[0](task)


_ORIGINAL_DOWNLOAD: list[Callable[[Any], Any]] = []


@contextlib.contextmanager
def lighteval_patches() -> Iterator[None]:
    """Within the block, lighteval's registry loads only the custom task module it is given (no
    built-in task module is imported, so tiny_benchmarks never downloads), and a task whose
    ``hf_repo`` is in :data:`LOCAL_DATASETS` gets its dataset from there instead of the hub."""
    from lighteval.tasks.lighteval_task import LightevalTask  # deferred: heavy import
    from lighteval.tasks.registry import Registry  # deferred: heavy import

    saved_load = Registry.__dict__["load_all_task_configs"]
    saved_download = LightevalTask.__dict__["download_dataset_worker"]
    _ORIGINAL_DOWNLOAD[:] = [saved_download.__func__]
    Registry.load_all_task_configs = staticmethod(_load_only_custom)
    LightevalTask.download_dataset_worker = staticmethod(_download_local_first)
    try:
        yield
    finally:
        Registry.load_all_task_configs = saved_load
        LightevalTask.download_dataset_worker = saved_download


def task_registry(tasks: str, module: ModuleType) -> Any:
    """A lighteval ``Registry`` of ``tasks`` from ``module`` alone (for inspection and tests)."""
    from lighteval.tasks.registry import Registry  # deferred: heavy import

    with lighteval_patches():
        return Registry(tasks=tasks, custom_tasks=module)
