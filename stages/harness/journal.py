"""A resumable journal of per-item results, for stages that generate item by item (evolve, revise,
dpo's sampling): finished items are appended (flushed and fsynced) as they finish, in the build's
``.partial`` folder, so a rerun after Ctrl-C, a crash or ``kill -9`` with the same config does only
the unfinished ones. A torn last line (a kill mid-write) is ignored; a bad line elsewhere is an
error naming the file and line.

    journal = Journal(ctx.ckpt.partial_dir / "round_1" / "samples.journal.jsonl")
    todo = [p for p in problems if p["id"] not in journal.done]
    for chunk in chunks(todo):
        journal.append(chunk_results)      # rows carry the item key (``id`` by default)
    rows = journal.rows()                  # everything, finished before or now
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from stages.common.data import DataFormatError


class Journal:
    """Append-only jsonl of result rows keyed by ``key`` (a field of every row). Several rows may
    share a key (e.g. N samples of a problem); an item is done once a row with ``"_done": true``
    and its key has been appended (:meth:`finish`), so a problem whose samples were only partly
    written is redone whole."""

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self._rows: list[dict] = []
        self.done: set[str] = set()
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a torn last line: the write a kill interrupted
            data = data[: data.rfind(b"\n") + 1]
            with self.path.open("r+b") as fh:
                fh.truncate(len(data))
        pending: dict[str, list[dict]] = {}
        for lineno, text in enumerate(data.decode("utf-8").splitlines(), start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataFormatError(self.path, lineno, None, f"is not valid JSON ({e.msg})") from e
            if row.get("_done"):
                key = str(row[self.key])
                self.done.add(key)
                self._rows += pending.pop(key, [])
            else:
                pending.setdefault(str(row[self.key]), []).append(row)

    def append(self, rows: Iterable[dict]) -> None:
        """Write ``rows`` and mark their items done, in one fsynced append."""
        rows = list(rows)
        keys = list(dict.fromkeys(str(r[self.key]) for r in rows))
        self.finish_with(rows, keys)

    def finish_with(self, rows: Iterable[dict], keys: Iterable[str]) -> None:
        """Write ``rows`` and mark ``keys`` done (an item may end with no row at all)."""
        rows, keys = list(rows), [str(k) for k in keys]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        text += "".join(json.dumps({self.key: k, "_done": True}) + "\n" for k in keys)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        self._rows += rows
        self.done.update(keys)

    def rows(self) -> list[dict]:
        """Every row of every finished item, in the order written."""
        return list(self._rows)
