"""Versioned, atomic, resumable stage checkpoints and their lineage.

Layout: ``runs/<run>/<stage>/v<N>/`` plus ``runs/<run>/<stage>/latest -> v<N>``. A version is
built in ``v<N>.partial/`` and renamed when complete; ``manifest.json`` is written last, so a
folder without a complete manifest is never a checkpoint. A rerun whose parent, config and inputs
hash the same as a complete version skips the stage; an interrupted run finds its ``.partial``
folder by the same key and resumes from the last trainer checkpoint inside it.

The manifest lists every file of the version with its size and sha256; a parent whose files are
missing or changed is refused, naming the file, before any model loads. One build of a stage runs
at a time: :func:`open_stage` takes an exclusive lock on the stage folder (``<stage>/.lock``,
released when the process ends, even by ``kill -9``), so a second process building the same stage
of the same run waits for the first and then finds its version complete.

Only the main process of a multi-process launch touches the file system; the other ranks wait
for it and then find the same folder.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from stages.common.data import apply_umask, write_json

MANIFEST = "manifest.json"
METRICS = "metrics.json"
PLAN = "plan.json"  # the identity of a .partial build: what it would become
TRAINER_DIR = "trainer"
LOCK = ".lock"
# Stages whose checkpoints hold a policy, newest in pipeline order first (``@latest_policy``).
POLICY_STAGES = ("dpo", "revise", "evolve", "grpo", "sft")
LATEST_POLICY = "@latest_policy"
_VERSION_RE = re.compile(r"^v(\d+)(\.partial)?$")
_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "lighteval", "math-verify",
             "sympy", "deepspeed", "vllm", "flash-attn", "bitsandbytes", "liger-kernel")


class CheckpointError(RuntimeError):
    """A parent that is not a usable checkpoint, or a checkpoint folder in a bad state."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty else "")) if sha else None


# ---------------------------------------------------------------------------------------------
# Reading checkpoints


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of a complete checkpoint folder, else None."""
    mpath = Path(path) / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if manifest.get("status") == "complete" else None


def is_checkpoint(path: str | os.PathLike) -> bool:
    return read_manifest(path) is not None


def latest_version(stage_dir: str | os.PathLike) -> Path | None:
    """The newest complete version of a stage folder (following ``latest`` when it is valid)."""
    stage_dir = Path(stage_dir)
    link = stage_dir / "latest"
    if link.is_symlink() or link.exists():
        target = link.resolve()
        if is_checkpoint(target):
            return target
    versions = sorted(
        (int(m.group(1)), p) for p in stage_dir.glob("v*") if (m := _VERSION_RE.match(p.name)) and not m.group(2)
    )
    for _, p in reversed(versions):
        if is_checkpoint(p):
            return p
    return None


@dataclass
class Parent:
    """A resolved parent: a stage checkpoint (with manifest), a plain local model folder or a hub id."""

    spec: str
    path: str  # local path or hub id, what from_pretrained takes
    kind: str  # "checkpoint" | "local" | "hub"
    manifest: dict | None = None
    manifest_sha256: str | None = None

    def to_json(self) -> dict:
        out = {"spec": self.spec, "path": self.path, "kind": self.kind, "manifest_sha256": self.manifest_sha256}
        if self.manifest:
            out.update(stage=self.manifest.get("stage"), version=self.manifest.get("version"))
        return out


def file_inventory(folder: str | os.PathLike) -> list[dict]:
    """Every file under ``folder`` (recursively, symlinks followed) with its size and sha256,
    sorted by relative path; the manifest itself is left out."""
    folder = Path(folder)
    out = []
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.relative_to(folder).as_posix() != MANIFEST:
            out.append({"path": f.relative_to(folder).as_posix(), "bytes": f.stat().st_size, "sha256": sha256_file(f)})
    return out


def verify_files(folder: str | os.PathLike, manifest: dict, *, what: str = "checkpoint") -> None:
    """Check that every file the manifest lists is there with its size and hash; a missing or
    changed file is a :class:`CheckpointError` naming it. Manifests written before the inventory
    existed (no ``files``) are accepted as they are."""
    folder = Path(folder)
    for entry in manifest.get("files") or []:
        f = folder / entry["path"]
        if not f.is_file():
            raise CheckpointError(f"{what}: {f} is missing (listed in {folder / MANIFEST}); the checkpoint is "
                                  f"damaged: rebuild it (remove {folder} and rerun its stage)")
        size = f.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{what}: {f} has {size} bytes, its manifest says {entry['bytes']}; the checkpoint "
                                  f"is damaged or was edited: rebuild it (remove {folder} and rerun its stage)")
        if entry.get("sha256") and sha256_file(f) != entry["sha256"]:
            raise CheckpointError(f"{what}: {f} does not match the sha256 in its manifest; the checkpoint is damaged "
                                  f"or was edited: rebuild it (remove {folder} and rerun its stage)")


def stage_ref(spec: str, run_dir: str | Path) -> str:
    """``@<stage>`` is that stage's folder in this run (whose ``latest`` is its newest
    checkpoint); any other spec (a file, folder, hub id or data source) is returned as it is."""
    return str(Path(run_dir) / spec[1:]) if spec.startswith("@") else spec


def resolve_parent(spec: str) -> Parent:
    """Resolve a parent spec: a version folder, a stage folder (its ``latest``), a run folder's
    stage path, a plain local HF model folder, or a hub id. A local folder that looks like a
    stage checkpoint but has no complete manifest is refused."""
    p = Path(spec)
    if p.exists():
        if not p.is_dir():
            raise CheckpointError(f"parent '{spec}' is a file, not a checkpoint folder")
        if (p / MANIFEST).exists() or _VERSION_RE.match(p.name):
            manifest = read_manifest(p)
            if manifest is None:
                raise CheckpointError(
                    f"parent '{spec}' is not a complete checkpoint: its manifest.json is missing or its status "
                    f"is not 'complete' (an interrupted stage?). Rerun the stage that writes it, or point at "
                    f"a complete version."
                )
            verify_files(p, manifest, what=f"parent '{spec}'")
            return Parent(spec, str(p.resolve()), "checkpoint", manifest, sha256_file(p / MANIFEST))
        if p.name.endswith(".partial"):
            raise CheckpointError(f"parent '{spec}' is an unfinished build (.partial); it is not a checkpoint")
        if any(c.is_dir() and _VERSION_RE.match(c.name) for c in p.iterdir()):
            latest = latest_version(p)
            if latest is None:
                raise CheckpointError(f"parent '{spec}' is a stage folder without any complete version")
            return resolve_parent(str(latest))
        if (p / "config.json").exists() or (p / "adapter_config.json").exists():
            return Parent(spec, str(p.resolve()), "local")
        raise CheckpointError(
            f"parent '{spec}' is a folder but neither a stage checkpoint (manifest.json) nor a model folder "
            f"(config.json)"
        )
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.startswith(("runs/", "./", "../")):
        return Parent(spec, spec, "hub")
    raise CheckpointError(f"parent '{spec}' does not exist (not a local folder, and not a hub id like org/name)")


def resolve_policy(spec: str, run_dir: str | Path, stage: str | None = None) -> str:
    """``@latest_policy``: the newest complete policy checkpoint of this run (dpo, revise, evolve,
    grpo, sft, in that order of preference); any other spec is returned as it is. For a stage of
    that list (``stage``), only the stages before it count: a rerun of dpo must not take its own
    checkpoint (or a later stage's) as its parent."""
    if spec != LATEST_POLICY:
        return spec
    candidates = POLICY_STAGES[POLICY_STAGES.index(stage) + 1:] if stage in POLICY_STAGES else POLICY_STAGES
    for name in candidates:
        folder = Path(run_dir) / name
        if not folder.is_dir():
            continue
        try:
            parent = resolve_parent(str(folder))
        except CheckpointError:
            continue
        if (Path(parent.path) / "config.json").exists() or (Path(parent.path) / "adapter_config.json").exists():
            return str(folder)
    raise CheckpointError(f"{LATEST_POLICY}: run '{run_dir}' has no complete policy checkpoint (looked for "
                          f"{', '.join(candidates)})")


# ---------------------------------------------------------------------------------------------
# Writing checkpoints


@dataclass
class StageCheckpoint:
    """One build of a stage: where to write, and whether it is already done or resuming."""

    run_dir: Path
    stage: str
    version: int
    key: dict
    status: str  # "new" | "resume" | "done"
    started_at: str = field(default_factory=now_iso)

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / self.stage

    @property
    def final_dir(self) -> Path:
        return self.stage_dir / f"v{self.version}"

    @property
    def partial_dir(self) -> Path:
        return self.stage_dir / f"v{self.version}.partial"

    @property
    def work_dir(self) -> Path:
        """Where the stage writes: the final folder when done, else the .partial folder."""
        return self.final_dir if self.status == "done" else self.partial_dir

    @property
    def trainer_dir(self) -> Path:
        return self.partial_dir / TRAINER_DIR

    def last_trainer_checkpoint(self, subdir: str | None = None) -> str | None:
        """The newest ``checkpoint-<step>`` inside the .partial folder's trainer folder (or its
        ``subdir``, one training round of several), to resume from."""
        folder = self.trainer_dir / subdir if subdir else self.trainer_dir
        if not folder.is_dir():
            return None
        steps = []
        for c in folder.glob("checkpoint-*"):
            m = re.fullmatch(r"checkpoint-(\d+)", c.name)
            # transformers writes trainer_state.json last: a checkpoint is usable once it parses
            if m and _is_json(c / "trainer_state.json"):
                steps.append((int(m.group(1)), c))
        return str(max(steps)[1]) if steps else None

    def manifest(self, *, metrics: dict | None = None, extra: dict | None = None,
                 files: list[dict] | None = None) -> dict:
        return {
            "stage": self.stage,
            "version": self.version,
            "run": self.run_dir.name,
            "status": "complete",
            **self.key,
            "packages": package_versions(),
            "git_commit": git_commit(),
            "host": platform.node(),
            "started_at": self.started_at,
            "finished_at": now_iso(),
            "metrics": metrics or {},
            "files": files or [],
            **(extra or {}),
        }

    def finalize(self, *, metrics: dict | None = None, extra: dict | None = None) -> Path:
        """Write metrics.json, then manifest.json (last), give every file the permissions the umask
        gives, rename .partial to v<N>, move ``latest``."""
        if self.status == "done":
            return self.final_dir
        shutil.rmtree(self.trainer_dir, ignore_errors=True)  # intermediate trainer checkpoints
        write_json(self.partial_dir / METRICS, metrics or {})
        (self.partial_dir / PLAN).unlink(missing_ok=True)
        apply_umask(self.partial_dir)  # model.safetensors comes 0600 from safetensors' temporary file
        files = file_inventory(self.partial_dir)
        write_json(self.partial_dir / MANIFEST, self.manifest(metrics=metrics, extra=extra, files=files))
        os.replace(self.partial_dir, self.final_dir)
        _point_latest(self.stage_dir, self.final_dir.name)
        self.status = "done"
        return self.final_dir


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def _point_latest(stage_dir: Path, target: str) -> None:
    tmp = stage_dir / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, stage_dir / "latest")


def checkpoint_key(*, config: dict, parent: Parent | None, inputs: list[str], seed: int | None) -> dict:
    """What identifies a build: the resolved config, the parent's manifest and the input files."""
    return {
        "config": config,
        "config_sha256": sha256_json(config),
        "parent": parent.to_json() if parent else None,
        "inputs": [{"path": str(p), "sha256": sha256_file(p), "bytes": Path(p).stat().st_size} for p in inputs],
        "seed": seed,
    }


def _same_build(a: dict, b: dict) -> bool:
    def ident(k: dict) -> tuple:
        parent = k.get("parent") or {}
        return (k.get("config_sha256"), parent.get("manifest_sha256"), parent.get("path"),
                tuple(i["sha256"] for i in k.get("inputs", [])), k.get("seed"))

    return ident(a) == ident(b)


class StageLock:
    """An exclusive lock on a stage folder: one build of a stage of a run at a time.

    ``fcntl.flock`` on ``<stage>/.lock``: the kernel releases it when the holder exits, however it
    exits, so a lock is never stale. A second process waits (saying who holds the lock) for at
    most ``timeout_s`` seconds (None: as long as it takes), then raises :class:`CheckpointError`."""

    def __init__(self, stage_dir: str | os.PathLike, *, timeout_s: float | None = None, label: str = ""):
        self.path = Path(stage_dir) / LOCK
        self.timeout_s, self.label = timeout_s, label or Path(stage_dir).name
        self._fh = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def acquire(self) -> StageLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[{self.label}] waiting: {self.holder()} is building this stage of this run ({self.path})",
                  file=sys.stderr, flush=True)
            deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        holder = self.holder()
                        fh.close()
                        raise CheckpointError(f"{self.path}: {holder} still holds the build lock after "
                                              f"{self.timeout_s:.0f}s; wait for it or stop it") from None
                    time.sleep(0.5)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {platform.node()} since {now_iso()} ({' '.join(sys.argv)[:200]})\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor drops the flock
            self._fh = None

    def __enter__(self) -> StageLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def open_stage(run_dir: str | os.PathLike, stage: str, key: dict, *, is_main: bool = True) -> StageCheckpoint:
    """Find or create the build of ``stage`` identified by ``key``.

    Returns status ``done`` when a complete version with the same key exists (the stage skips;
    its files are verified against its manifest), ``resume`` when an interrupted .partial build
    with the same key exists, else ``new`` with a fresh ``v<N>.partial`` folder (created by the
    main process only). The caller holds the stage's :class:`StageLock` around this and the build."""
    run_dir = Path(run_dir)
    stage_dir = run_dir / stage
    found_partial: int | None = None
    max_v = 0
    if stage_dir.is_dir():
        for p in stage_dir.iterdir():
            m = _VERSION_RE.match(p.name)
            if not m:
                continue
            v = int(m.group(1))
            max_v = max(max_v, v)
            if m.group(2):
                try:
                    plan = json.loads((p / PLAN).read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                if _same_build(plan, key):
                    found_partial = v if found_partial is None else max(found_partial, v)
            else:
                manifest = read_manifest(p)
                if manifest and _same_build(manifest, key):
                    verify_files(p, manifest, what=f"{stage} v{v} (complete, same parent, config and data)")
                    return StageCheckpoint(run_dir, stage, v, key, "done")
    if found_partial is not None:
        return StageCheckpoint(run_dir, stage, found_partial, key, "resume")
    ckpt = StageCheckpoint(run_dir, stage, max_v + 1, key, "new")
    if is_main:
        ckpt.partial_dir.mkdir(parents=True, exist_ok=False)
        write_json(ckpt.partial_dir / PLAN, key)
    return ckpt


# ---------------------------------------------------------------------------------------------
# Lineage


def lineage(path: str | os.PathLike) -> list[dict]:
    """The chain of manifests from a checkpoint (or a stage folder's latest) back to its root."""
    chain = []
    current: str | None = str(path)
    seen = set()
    while current and current not in seen:
        seen.add(current)
        p = Path(current)
        if p.is_dir() and not (p / MANIFEST).exists():
            latest = latest_version(p)
            p = latest if latest else p
        manifest = read_manifest(p)
        if manifest is None:
            chain.append({"path": current, "stage": None, "kind": "external"})
            break
        chain.append({"path": str(p), **manifest})
        parent = manifest.get("parent") or {}
        current = parent.get("path") if parent.get("kind") in ("checkpoint", None) else None
        if parent and parent.get("kind") in ("local", "hub"):
            chain.append({"path": parent.get("path"), "stage": None, "kind": parent.get("kind")})
    return chain


def run_checkpoints(run_dir: str | os.PathLike) -> list[dict]:
    """Every complete checkpoint in a run folder, ordered by finish time."""
    out = []
    for mpath in Path(run_dir).glob(f"*/v*/{MANIFEST}"):
        manifest = read_manifest(mpath.parent)
        if manifest:
            out.append({"path": str(mpath.parent), **manifest})
    return sorted(out, key=lambda m: m.get("finished_at", ""))
