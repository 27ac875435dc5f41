"""Config parsing for every stage: a YAML recipe plus CLI overrides through TRL's ``TrlParser``.

A stage declares typed dataclasses (its own arguments, the TRL config it wraps and
``trl.ModelConfig``); :func:`parse_config` fills them from ``--config recipe.yaml`` and
``--field value`` overrides. A recipe may start from another one (``base: ../tiny/sft.yaml``) and
override some of its keys. An unknown key in the recipe or on the command line is an error that
names the key, the file and its line. :func:`resolved_config` gives the JSON that goes into the
manifest and whose hash identifies a build.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

# Fields that change where or how a run is logged, never what it computes: left out of the hash.
NON_SEMANTIC_FIELDS = frozenset({
    "output_dir", "logging_dir", "run_name", "report_to", "logging_steps", "logging_strategy",
    "logging_first_step", "save_steps", "save_strategy", "save_total_limit", "save_only_model",
    "dry_run", "overwrite_output_dir", "disable_tqdm", "push_to_hub", "hub_model_id", "hub_strategy",
    "hub_token", "hub_private_repo", "resume_from_checkpoint", "runs_dir", "log_level", "log_level_replica",
    "log_on_each_node", "eval_steps", "eval_strategy", "dataloader_num_workers", "project", "trackio_space_id",
    "trackio_bucket_id", "logging_nan_inf_filter", "include_num_input_tokens_seen",
    # synth's operational knobs: its response cache makes a rerun free whatever they are
    "concurrency", "request_timeout_s", "request_deadline_s", "max_retries", "backoff_base_s", "backoff_max_s",
    "cache_dir", "generation_batch_size",
})


class ConfigError(ValueError):
    """A recipe or command line that does not fit the stage's config."""


def list_option(values: Sequence[str]) -> list[str]:
    """A list option without its ``none`` entries: ``--eval_data none`` turns a recipe's list off on the
    command line, where an empty list cannot be written."""
    return [v for v in values if v.lower() != "none"]


def mapping_option(value: dict | str | None, name: str, what: str) -> dict | None:
    """A recipe option that maps names to values: a YAML mapping, or a JSON object on the command line.
    None (or "") when unset; a ConfigError naming the option otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}: not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must {what}, got {type(value).__name__}")
    return value


def _key_line(path: Path, key: str) -> int | None:
    try:
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            if re.match(rf"^\s*{re.escape(key)}\s*:", line):
                return i
    except OSError:
        return None
    return None


def parse_config(dataclass_types: Sequence[type], argv: Sequence[str] | None = None, *, prog: str | None = None):
    """Parse ``--config recipe.yaml`` and CLI overrides into instances of ``dataclass_types``."""
    from trl import TrlParser  # deferred: keep `import stages.common` light

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = TrlParser(list(dataclass_types), prog=prog)
    config_path = Path(argv[argv.index("--config") + 1]) if "--config" in argv[:-1] else None
    merged_file = None
    if config_path is not None:
        merged, chain = _load_recipe(config_path, dataclass_types, ())
        if len(chain) > 1:  # TrlParser reads one file: hand it the merged recipe
            merged_file = _write_merged(merged, chain)
            argv[argv.index("--config") + 1] = merged_file
    try:
        *parsed, cli_rest = parser.parse_args_and_config(argv, return_remaining_strings=True)
    except ValueError as e:  # a value that does not fit its field, or a config's own validation
        where = f"{config_path}: " if config_path else ""
        raise ConfigError(f"{where}{e}") from e
    finally:
        if merged_file is not None:
            Path(merged_file).unlink(missing_ok=True)
    if cli_rest:
        raise ConfigError(f"unknown command-line argument(s): {' '.join(cli_rest)}")
    return tuple(parsed)


def _check_recipe_keys(path: Path, dataclass_types: Sequence[type]) -> dict:
    if not path.is_file():
        raise ConfigError(f"recipe '{path}' does not exist")
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping of field: value")
    fields = {f.name for t in dataclass_types for f in dataclasses.fields(t)} | {"env", "base"}
    unknown = [k for k in recipe if k not in fields]
    if unknown:
        where = ", ".join(f"'{k}' (line {ln})" if (ln := _key_line(path, k)) else f"'{k}'" for k in unknown)
        raise ConfigError(
            f"{path}: unknown key(s) {where}: not a field of {', '.join(t.__name__ for t in dataclass_types)}"
        )
    return recipe


def _load_recipe(path: Path, dataclass_types: Sequence[type], seen: tuple[Path, ...]) -> tuple[dict, tuple[Path, ...]]:
    """A recipe with its ``base:`` chain resolved: ``base`` names another recipe (relative to this
    file) whose keys this one overrides, top-level key by key. Returns the merged mapping and the
    files it came from, this one first."""
    recipe = dict(_check_recipe_keys(path, dataclass_types))
    base = recipe.pop("base", None)
    if base is None:
        return recipe, (path,)
    line = _key_line(path, "base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: 'base' (line {line}) must be the path of another recipe")
    base_path = (path.parent / base).resolve()
    visited = (*seen, path.resolve())
    if base_path in visited:
        raise ConfigError(f"{path}: 'base' (line {line}) makes a cycle through {base_path}")
    if not base_path.is_file():
        raise ConfigError(f"{path}: 'base' (line {line}) names '{base_path}', which does not exist")
    merged, files = _load_recipe(base_path, dataclass_types, visited)
    merged.update(recipe)
    return merged, (path, *files)


def _write_merged(merged: dict, chain: tuple[Path, ...]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="recipe-", delete=False) as f:
        f.write(f"# merged from {' <- '.join(map(str, chain))}\n")
        yaml.safe_dump(merged, f, sort_keys=False)
    return f.name


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def resolved_config(*configs: Any, extra: dict | None = None) -> dict:
    """The resolved config as JSON, one section per dataclass, without non-semantic fields."""
    out: dict[str, Any] = {}
    for cfg in configs:
        if cfg is None:
            continue
        values = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
        out[type(cfg).__name__] = {
            k: _jsonable(v) for k, v in sorted(values.items()) if k not in NON_SEMANTIC_FIELDS and not k.startswith("_")
        }
    if extra:
        out.update(_jsonable(extra))
    return out
