"""Data record formats and validated jsonl I/O: the one place that defines them.

Formats (see docs/data-formats.md):
- Problem: ``{"id", "question", "answer"}``; ``answer`` is the gold final answer as a string.
- Verified solution: Problem plus ``completion``, ``executed_answer``, ``correct``, ``source``,
  ``n_tokens``.
- Step-labelled solution (PRM): TRL's stepwise format ``{"prompt", "completions", "labels"}``.

Every row read is validated; a bad row raises :class:`DataFormatError` naming file, line and
field. Nothing is dropped silently. Writes are atomic (temporary file, fsync, rename).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common import arith

# field -> (accepted types, required)
Schema = dict[str, tuple[tuple[type, ...], bool]]

PROBLEM: Schema = {"id": ((str,), True), "question": ((str,), True), "answer": ((str,), True)}
VERIFIED: Schema = {
    **PROBLEM,
    "completion": ((str,), True),
    "executed_answer": ((str, type(None)), True),
    "correct": ((bool,), True),
    "source": ((str,), True),
    "n_tokens": ((int,), True),
}
STEPWISE: Schema = {
    "prompt": ((str,), True),
    "completions": ((list,), True),
    "labels": ((list,), True),
}
SCHEMAS = {"problem": PROBLEM, "verified": VERIFIED, "stepwise": STEPWISE}


class DataFormatError(ValueError):
    """A data file row that does not match its format; the message names file, line and field."""

    def __init__(self, path: str | os.PathLike, line: int | None, field: str | None, message: str):
        where = f"{path}" + (f":{line}" if line is not None else "")
        what = f" field '{field}'" if field else ""
        super().__init__(f"{where}:{what} {message}".replace(":  ", ": "))
        self.path, self.line, self.field = str(path), line, field


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def validate_row(row: Any, schema: Schema, path: str | os.PathLike = "<data>", line: int | None = None) -> dict:
    """Check one row against ``schema``; return it or raise :class:`DataFormatError`."""
    if not isinstance(row, dict):
        raise DataFormatError(path, line, None, f"expected a JSON object, got {type(row).__name__}")
    for field, (types, required) in schema.items():
        if field not in row:
            if required:
                raise DataFormatError(path, line, field, "is missing")
            continue
        value = row[field]
        # bool is an int subclass: an int field must not accept True/False and vice versa
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise DataFormatError(
                path, line, field, f"expected {_type_names(types)}, got {type(value).__name__} {value!r:.60}"
            )
        if types == (str,) and field in ("id", "question", "answer") and not value.strip():
            raise DataFormatError(path, line, field, "is empty")
    if schema is STEPWISE:
        _validate_stepwise(row, path, line)
    return row


def _validate_stepwise(row: dict, path, line) -> None:
    completions, labels = row["completions"], row["labels"]
    if not all(isinstance(c, str) for c in completions):
        raise DataFormatError(path, line, "completions", "every step must be a string")
    if len(completions) != len(labels):
        raise DataFormatError(
            path, line, "labels", f"has {len(labels)} labels for {len(completions)} steps"
        )
    for i, lab in enumerate(labels):
        if isinstance(lab, bool) or lab in ("negative", "neutral", "positive"):
            continue
        if isinstance(lab, int | float) and 0.0 <= float(lab) <= 1.0:
            continue
        raise DataFormatError(
            path, line, f"labels[{i}]", f"must be a bool, a number in [0, 1] or a class name, got {lab!r}"
        )


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for every non-blank line; bad JSON names the line."""
    path = Path(path)
    try:
        fh = path.open(encoding="utf-8")
    except OSError as e:
        raise DataFormatError(path, None, None, f"cannot be read: {e.strerror or e}") from e
    with fh:
        for lineno, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, lineno, None, f"is not valid JSON ({e.msg} at column {e.colno})") from e


def read_jsonl(path: str | os.PathLike, schema: Schema | str | None = None) -> list[dict]:
    """Read a jsonl file, validating every row against ``schema`` (a Schema or a name in SCHEMAS)."""
    if isinstance(schema, str):
        schema = SCHEMAS[schema]
    rows = []
    for lineno, row in iter_jsonl(path):
        rows.append(validate_row(row, schema, path, lineno) if schema is not None else row)
    return rows


def current_umask() -> int:
    """The process's umask (0o022 on most systems)."""
    # os.umask can only be read by setting it; the stricter 0o077 meanwhile means a file another
    # thread creates in between is at worst more private, never more open.
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or every file under a folder) the permissions the umask gives a new
    file (0644 under umask 022), keeping execute bits the umask allows. mkstemp, and the temporary
    files that libraries write atomically through (safetensors' ``save_file`` writes
    ``model.safetensors`` so), create files 0600 whatever the umask, which shuts teammates on a
    shared file system out of a checkpoint."""
    path = Path(path)
    umask = current_umask()
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file() and not f.is_symlink()]
    for f in files:
        current = f.stat().st_mode & 0o777
        wanted = ((current & 0o111) | 0o666) & ~umask
        if current != wanted:
            f.chmod(wanted)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one; the file
    gets the permissions the umask gives (mkstemp's own 0600 would hide it from teammates)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Atomically write ``rows`` as jsonl; returns the number of rows."""
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# Problem sources: "arith:<split>[:n[:seed]][:levels=...]", "gsm8k:<split>[:n]", or a jsonl path, optionally
# with a field mapping: "<path>?question={Body} {Question}&answer=Answer".

_TEMPLATE_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_OPTION_START_RE = re.compile(r"\?(?=\w+=)")
_OPTION_SPLIT_RE = re.compile(r"&(?=\w+=)")


@dataclass(frozen=True)
class FieldMap:
    """Where the rows of a jsonl keep a Problem's fields, for a benchmark with other field names.

    Each of ``question``, ``answer`` and ``id`` is a field name (a dotted path reaches into nested
    objects: ``meta.answer``) or a template joining fields, ``"{Body} {Question}"`` (``{{`` and
    ``}}`` are literal braces). A string or number field is used as text. Without ``id``, a row's
    ``id`` field is the id when it has one, else ``<file stem>-<line - 1>``. An ``answer`` holding a
    worked solution that ends in ``#### x`` gives the gold ``x`` (and ``solution``), as a raw GSM8K
    row does. Written after a jsonl path in a problem source: ``data/svamp.jsonl?question={Body}
    {Question}&answer=Answer`` (a recipe's data lists, eval's ``eval_sets``)."""

    question: str = "question"
    answer: str = "answer"
    id: str | None = None

    KEYS = ("question", "answer", "id")

    @classmethod
    def parse(cls, options: str, source: str = "<source>") -> FieldMap:
        """``question=...&answer=...[&id=...]`` (the part of a source after ``?``)."""
        values: dict[str, str] = {}
        for option in _OPTION_SPLIT_RE.split(options):
            key, eq, value = option.partition("=")
            if not eq or key not in cls.KEYS:
                raise DataFormatError(source, None, None, f"field mapping option {option!r:.60} is not one of "
                                                          f"{', '.join(k + '=...' for k in cls.KEYS)}")
            if key in values:
                raise DataFormatError(source, None, None, f"field mapping gives '{key}' twice")
            if not value.strip():
                raise DataFormatError(source, None, None, f"field mapping '{key}=' names no field")
            values[key] = value
        return cls(**values)

    def spec(self) -> str:
        """The options as written after ``?`` in a source (inverse of :meth:`parse`)."""
        return "&".join(f"{k}={getattr(self, k)}" for k in self.KEYS if getattr(self, k) is not None)

    def apply(self, row: Any, path: str | os.PathLike, line: int) -> dict:
        """The Problem fields of one row (``id``, ``question``, ``answer``, maybe ``solution``)."""
        if not isinstance(row, dict):
            raise DataFormatError(path, line, None, f"expected a JSON object, got {type(row).__name__}")
        question = _render(self.question, row, path, line)
        answer = _render(self.answer, row, path, line)
        if self.id is not None:
            ident = _render(self.id, row, path, line)
        elif isinstance(row.get("id"), str | int) and not isinstance(row["id"], bool) and str(row["id"]).strip():
            ident = str(row["id"])
        else:
            ident = f"{Path(path).stem}-{line - 1}"
        out = {"id": ident, "question": question, "answer": answer}
        if "####" in answer:
            try:
                out["answer"], out["solution"] = gsm8k_gold(answer), answer
            except ValueError as e:
                raise DataFormatError(path, line, self.answer, str(e)) from e
        return out


def _field_value(row: dict, name: str, path: str | os.PathLike, line: int) -> str:
    value: Any = row
    if name in row:
        value = row[name]
    else:
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                raise DataFormatError(path, line, name, "is missing")
            value = value[part]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataFormatError(path, line, name, f"expected a string or a number, got {type(value).__name__} "
                                                f"{value!r:.60}")
    return str(value)


def _render(template: str, row: dict, path: str | os.PathLike, line: int) -> str:
    """A field's text, or a template's with each ``{field}`` filled in."""
    if "{" not in template and "}" not in template:
        return _field_value(row, template, path, line)

    def fill(m: re.Match) -> str:
        if m.group(0) in ("{{", "}}"):
            return m.group(0)[0]
        return _field_value(row, m.group(1).strip(), path, line)

    return _TEMPLATE_RE.sub(fill, template).strip()


def split_source(source: str) -> tuple[str, FieldMap | None]:
    """A problem source without its field mapping, and the mapping (None without one). A file
    whose name holds ``?`` is taken as it is."""
    if Path(source).exists():
        return source, None
    m = _OPTION_START_RE.search(source)
    if m is None:
        return source, None
    return source[: m.start()], FieldMap.parse(source[m.end():], source)


def source_file(source: str) -> Path | None:
    """The jsonl file of a jsonl problem source (with or without a field mapping), for input
    hashes and existence checks; None for ``arith:``/``gsm8k:`` sources and missing files."""
    path, _ = split_source(source)
    return Path(path) if Path(path).is_file() else None


def source_files(source: str) -> list[str]:
    """The files a problem source reads, for the manifest's input hashes: a jsonl file (with or
    without a field mapping), or the local GSM8K split file; none for ``arith:`` (generated)."""
    file = source_file(source)
    if file is not None:
        return [str(file)]
    kind, _, rest = source.partition(":")
    if kind == "gsm8k" and rest:
        local = gsm8k_dir()
        split = rest.split(":")[0]
        if local is not None and (local / f"{split}.jsonl").is_file():
            return [str(local / f"{split}.jsonl")]
    return []


_GSM8K_FINAL_RE = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def gsm8k_gold(solution: str) -> str:
    """The gold answer of a GSM8K worked solution (the text after ``####``, commas removed)."""
    m = _GSM8K_FINAL_RE.search(solution)
    if m is None:
        raise ValueError("no '####' final answer")
    return m.group(1).strip().replace(",", "")


def gsm8k_dir() -> Path | None:
    """The local GSM8K copy: $MATHFORGE_GSM8K_DIR, else ../shared/data/gsm8k beside the repo."""
    env = os.environ.get("MATHFORGE_GSM8K_DIR")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[2]
    candidates += [repo.parent / "shared" / "data" / "gsm8k", repo / "data" / "gsm8k"]
    for c in candidates:
        if (c / "test.jsonl").is_file():
            return c
    return None


def load_gsm8k(split: str) -> list[dict]:
    """GSM8K as Problem rows (plus ``solution``, the worked solution): the local copy when
    present, else ``openai/gsm8k`` from the hub."""
    local = gsm8k_dir()
    if local is not None:
        path = local / f"{split}.jsonl"
        raw = [(lineno, r) for lineno, r in iter_jsonl(path)]
    else:
        import datasets  # deferred: only when no local copy exists

        ds = datasets.load_dataset("openai/gsm8k", "main", split=split)
        path = Path(f"hf://openai/gsm8k/{split}")
        raw = list(enumerate(ds, start=1))
    rows = []
    for lineno, r in raw:
        for field in ("question", "answer"):
            if not isinstance(r.get(field), str):
                raise DataFormatError(path, lineno, field, "is missing or not a string")
        try:
            gold = gsm8k_gold(r["answer"])
        except ValueError as e:
            raise DataFormatError(path, lineno, "answer", str(e)) from e
        rows.append({"id": f"gsm8k-{split}-{lineno - 1}", "question": r["question"], "answer": gold,
                     "solution": r["answer"]})
    return rows


def load_problems(source: str, *, seed: int = 0, fields: FieldMap | None = None) -> list[dict]:
    """Problems from a source spec:

    - ``arith:<split>[:n[:seed]][:levels=L[,L...]]``: the embedded arithmetic task
      (``stages.common.arith``; ``levels=4`` is its hard split);
    - ``gsm8k:<split>[:n]``: GSM8K (local copy or hub);
    - a path to a jsonl of Problem rows, or of raw GSM8K rows (``answer`` ending in ``#### x``);
    - a jsonl path with a field mapping, ``<path>?question=<field or template>&answer=<field>
      [&id=<field>]`` (:class:`FieldMap`), for rows with other field names.

    ``fields`` is the mapping of a jsonl source that carries none of its own.
    """
    path, own = split_source(source)
    kind, _, rest = path.partition(":")
    if own is not None and not Path(path).is_file() and kind in ("arith", "gsm8k"):
        raise DataFormatError(source, None, None, "a field mapping applies to a jsonl file, not to arith: or gsm8k:")
    fields = own or fields
    if kind == "arith" and rest:
        try:
            return arith.problems_from_spec(rest, seed=seed)
        except ValueError as e:
            raise DataFormatError(source, None, None, f"is not a valid arith source: {e}") from e
    if kind == "gsm8k" and rest and not Path(source).exists():
        split, _, n = rest.partition(":")
        rows = load_gsm8k(split)
        return rows[: int(n)] if n else rows
    rows = []
    for lineno, r in iter_jsonl(path):
        if fields is not None:
            r = fields.apply(r, path, lineno)
        elif isinstance(r, dict) and "id" not in r and isinstance(r.get("answer"), str) and "####" in r["answer"]:
            try:
                r = {"id": f"{Path(path).stem}-{lineno - 1}", "question": r.get("question"),
                     "answer": gsm8k_gold(r["answer"]), "solution": r["answer"]}
            except ValueError as e:
                raise DataFormatError(path, lineno, "answer", str(e)) from e
        rows.append(validate_row(r, PROBLEM, path, lineno))
    return rows


def load_gold_problems(sources: list[str], *, seed: int, needed_by: str) -> dict[str, list[dict]]:
    """The problems of every source, by source, for a stage that checks answers (``needed_by``
    names it in the error); a problem without a gold answer is an error naming its source and
    line, as is a set with no problem at all."""
    by_source: dict[str, list[dict]] = {}
    for src in sources:
        rows = load_problems(src, seed=seed)
        for lineno, row in enumerate(rows, start=1):
            gold = row.get("answer")
            if not isinstance(gold, str) or not gold.strip():
                # load_problems validates jsonl rows already; this guards the other sources too
                raise DataFormatError(src, lineno, "answer", f"problem has no gold answer; {needed_by} needs one")
        by_source[src] = rows
    if not any(by_source.values()):
        raise DataFormatError(",".join(sources) or "train_data", None, None,
                              f"holds no problem; {needed_by} needs problems with gold answers")
    return by_source
