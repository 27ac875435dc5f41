"""The package layers, lowest first; no import goes upward or sideways, function-local imports
included:

    sandbox -> stages.common (foundation) -> rewards -> stages.harness (the stage harness)
            -> stages.<stage>_lib (per-stage libraries) -> stages.<stage> (launch modules) -> eval

Per-stage libraries do not import each other, nor do launch modules. What a lower layer needs
from a higher one (the PRM scorer inside a reward) is passed in, never imported. A function-local
import is allowed only to defer a heavy module, and says so in a comment on its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sandbox", "stages", "rewards", "eval")
LAYER_NAMES = ("sandbox", "foundation (stages.common)", "rewards", "stage harness (stages.harness)",
               "per-stage library", "stage launch module", "eval")


def unit_of(module: str) -> tuple[int, str] | None:
    """(layer, unit) of a project module; None for a module outside the project. Imports inside a
    unit are free; between units they must go to a lower layer."""
    parts = module.split(".")
    top = parts[0]
    if top == "sandbox":
        return 0, "sandbox"
    if top == "rewards":
        return 2, "rewards"
    if top == "eval":
        return 6, "eval"
    if top != "stages":
        return None
    if len(parts) == 1 or parts[1] == "common":
        return 1, "stages.common"
    if parts[1] == "harness":
        return 3, "stages.harness"
    if parts[1].endswith("_lib"):
        return 4, f"stages.{parts[1]}"
    return 5, f"stages.{parts[1]}"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(module: str, source: str, is_package: bool) -> list[tuple[int, str, bool, str]]:
    """(line, imported module, function-local, the source line) for every import in ``source``."""
    tree = ast.parse(source)
    lines = source.splitlines()
    local: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    local.add(id(sub))
    out = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from stages import sft" imports the module stages.sft
            names = [f"{target}.{a.name}" if unit_of(f"{target}.{a.name}") and target.count(".") == 0
                     and target in PACKAGES else target for a in node.names]
        else:
            continue
        for name in names:
            out.append((node.lineno, name, id(node) in local, lines[node.lineno - 1]))
    return out


def violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Every import in ``sources`` ({module: (source, is_package)}) that breaks the layers, and
    every function-local import of a project module without a comment saying why."""
    found = []
    for module, (source, is_package) in sorted(sources.items()):
        here = unit_of(module)
        if here is None:
            continue
        for line, target, is_local, text in imports_of(module, source, is_package):
            there = unit_of(target)
            if is_local and "#" not in text:
                found.append(f"{module}:{line}: function-local import of {target} without a comment saying why "
                             f"(only a heavy module may be deferred)")
            if there is None or there[1] == here[1]:
                continue
            if there[0] > here[0] or (there[0] == here[0]):
                way = "upward" if there[0] > here[0] else "sideways"
                found.append(f"{module}:{line}: imports {target} {way} ({LAYER_NAMES[here[0]]} -> "
                             f"{LAYER_NAMES[there[0]]}): {text.strip()}")
    return found


def project_sources() -> dict[str, tuple[str, bool]]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            out[module_name(path, REPO)] = (path.read_text(encoding="utf-8"), path.name == "__init__.py")
    return out


def test_every_module_respects_the_layers():
    found = violations(project_sources())
    assert not found, "imports that break the layers:\n" + "\n".join(found)


MARKER = "noqa: " + "PLC0415"  # spelt in two parts so that this file does not match itself


def test_no_dead_noqa_markers():
    marked = [f"{path.relative_to(REPO)}:{i}" for package in (*PACKAGES, "bench", "tests")
              for path in (REPO / package).rglob("*.py")
              for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
              if MARKER in line]
    assert not marked, f"ruff does not select PLC0415; these markers are dead text: {marked}"


@pytest.mark.parametrize(("module", "source", "expected"), [
    # a foundation module reaching up into rewards, at module level and inside a function
    ("stages.common.generation", "from rewards import score_pot\n", "upward"),
    ("stages.common.generation", "def f():\n    from rewards import score_pot  # deferred: heavy\n", "upward"),
    # rewards importing a stage's library or launch module
    ("rewards.functions", "def f():\n    from stages.prm_lib.scorer import PRMScorer  # heavy\n", "upward"),
    ("rewards.functions", "import stages.prm\n", "upward"),
    # sideways: one stage's library importing another's, one launch module importing another
    ("stages.evolve_lib.loop", "from stages.prm_lib import scorer\n", "sideways"),
    ("stages.grpo", "from stages.sft import STAGE\n", "sideways"),
    # relative import from the foundation into the harness
    ("stages.common.modeling", "from ..harness import lifecycle\n", "upward"),
    # eval is the top: anything below is fine, but nothing imports eval
    ("stages.harness.policy", "from eval.passk import pass_at_k\n", "upward"),
    # a function-local project import with no reason given
    ("stages.harness.policy", "def f():\n    from stages.common import data\n", "without a comment"),
])
def test_a_planted_import_is_reported_with_its_place(module, source, expected):
    sources = {**project_sources(), module: (source, False)}
    found = [v for v in violations(sources) if v.startswith(f"{module}:")]
    assert found and expected in found[0], found
    assert found[0].split(":")[1].isdigit()  # names the line


def test_allowed_imports_are_not_reported():
    sources = {
        "stages.rl_lib.stage": ("from stages.harness import Stage\nfrom rewards import score_pot\n"
                                "from stages.common.data import load_problems\nfrom stages.rl_lib import trainer\n",
                                False),
        "stages.grpo": ("from stages.rl_lib.stage import rl_stage\nfrom stages.prm_lib.scorer import PRMScorer\n",
                        False),
        "eval.gsm8k": ("from stages.prm_lib.scorer import PRMScorer\nfrom stages.sft import STAGE\n", False),
        "stages.common.modeling": ("def f():\n    import torch  # deferred: heavy\n", False),
    }
    assert violations(sources) == []
