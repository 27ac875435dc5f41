"""The client side of the sandbox: ``Sandbox`` (a pool of isolated workers) and ``get_sandbox``.

Each worker slot is a fresh interpreter (``python -S -P -c "from sandbox._server import main;
main()"``, never a fork of the caller, which may hold torch and many threads) that the client
talks to over two pipes. The
client keeps up to two small requests queued per worker so that a worker never waits for the
client between runs. All waiting is ``poll`` on pipes in the calling thread: no helper threads,
no signals, nothing that breaks in a TRL reward function or an ``accelerate launch`` rank.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import select
import signal
import site
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from tqdm.auto import tqdm

from sandbox import _protocol
from sandbox.config import ERROR, OUTPUT_LIMIT, SANDBOX_ERROR, ExecResult, SandboxConfig, last_output_line

_PIPELINE_DEPTH = 2  # requests queued per worker
_PIPELINE_MAX_BYTES = 4000  # a queued request must fit an empty pipe (4 KiB at the least)
_WATCHDOG_GRACE_S = 120.0  # beyond timeout_s, a silent worker is declared hung (covers start-up)
_MAX_CONSECUTIVE_DEATHS = 8
_MAX_CODE_CHARS = 1 << 20
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PASS_ENV = ("LD_LIBRARY_PATH", "PYTHONHOME", "TZ")


def _server_env() -> dict[str, str]:
    """The worker's whole environment: nothing of the caller's (API keys, tokens) but what an
    interpreter needs to find its libraries."""
    pythonpath = [_PKG_PARENT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "PYTHONDONTWRITEBYTECODE": "1",
        # Pre-imported numeric libraries must not start thread pools in a template that forks.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.update({k: os.environ[k] for k in _PASS_ENV if k in os.environ})
    return env


def _site_dirs() -> list[str]:
    """This interpreter's site-packages directories (the workers run without ``site``)."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and not sys.flags.no_user_site:
        dirs.append(site.getusersitepackages())
    return [d for d in dirs if os.path.isdir(d)]


class _Worker:
    """One worker slot: the launcher process and the pipes to its init/template."""

    def __init__(self, cfg_msg: dict[str, Any]) -> None:
        # -S: no site module, whose .pth processing alone doubles the template's memory (and so
        # the cost of every fork); the site directories are appended to sys.path by the server,
        # and only the heavy template processes their .pth files. -P: no cwd on sys.path.
        # -c, not -m: runpy and importlib would stay in the template.
        argv = [sys.executable, "-S", "-P", "-c", "from sandbox._server import main; main()"]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_server_env(), cwd="/",
            start_new_session=True, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        self.reader = _protocol.Reader()
        self.report: dict[str, Any] | None = None
        self.inflight: deque[int] = deque()
        self.head_since = time.monotonic()
        _protocol.write_all(self.wfd, _protocol.encode(cfg_msg))
        os.set_blocking(self.rfd, False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, idx: int, data: bytes) -> None:
        if not self.inflight:
            self.head_since = time.monotonic()
        self.inflight.append(idx)
        _protocol.write_all(self.wfd, data)

    def read(self) -> tuple[list[dict[str, Any]], bool]:
        """Messages available now, and whether the worker has gone (EOF)."""
        msgs: list[dict[str, Any]] = []
        while True:
            try:
                data = os.read(self.rfd, 1 << 20)
            except BlockingIOError:
                return msgs, False
            if not data:
                return msgs, True
            msgs += self.reader.feed(data)

    def wait_hello(self, timeout: float) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while self.report is None:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"sandbox worker {self.pid} sent no hello within {timeout:.0f}s")
            select.select([self.rfd], [], [], left)
            msgs, gone = self.read()
            for m in msgs:
                if not self.handle_control(m):
                    raise RuntimeError(f"sandbox worker {self.pid}: unexpected {m['type']!r} before hello")
            if gone and self.report is None:
                raise RuntimeError(f"sandbox worker {self.pid} exited during start-up (see its stderr above)")
        return self.report

    def handle_control(self, msg: dict[str, Any]) -> bool:
        """Handle a non-result message; True if it was one."""
        if msg["type"] == "hello":
            self.report = msg["report"]
            if self.report.get("import_errors"):
                raise RuntimeError(f"sandbox worker could not import: {self.report['import_errors']}")
            return True
        if msg["type"] == "fatal":
            raise RuntimeError(f"sandbox worker failed to start: {msg['error']}")
        return False

    def stop(self, timeout: float = 2.0) -> None:
        """Close the request pipe (init then kills its runs and exits); SIGKILL if it lingers."""
        self.close_pipes()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # launcher, init and heavy share the group
        except (ProcessLookupError, PermissionError):
            pass
        self.close_pipes()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass

    def abandon(self) -> None:
        """In a forked child: drop our copies of the pipes, leave the parent's worker alone."""
        self.close_pipes()
        self.proc.returncode = 0  # not our child: never wait for it


_LIVE: weakref.WeakSet[Sandbox] = weakref.WeakSet()


class Sandbox:
    """A pool of isolated workers running untrusted Python; see docs/sandbox.md.

    ``Sandbox(cfg)`` starts the workers in the background (each imports the configured modules
    once); ``run`` and ``run_many`` wait for them. Thread-safe (calls are serialised), usable as a
    context manager, closed at interpreter exit, and re-started lazily in a forked child.
    """

    def __init__(self, config: SandboxConfig | None = None, **overrides: Any) -> None:
        cfg = config or SandboxConfig()
        if overrides:
            cfg = cfg.replace(**overrides)
        missing = [m for m in cfg.modules if importlib.util.find_spec(m.split(".")[0]) is None]
        if missing:
            raise ValueError(f"SandboxConfig.modules: not installed: {missing}")
        self.config = cfg
        self.n_workers = cfg.resolved_workers()
        self._heavy_roots = sorted({m.split(".")[0] for m in cfg.modules if m in cfg.heavy_modules})
        self._cfg_msg = {**asdict(cfg), "type": "config", "cpu_limit_s": cfg.cpu_limit_s,
                         "drop_uid": True, "site_dirs": _site_dirs(),
                         # the virtual environment, which the server (python -S) does not see
                         "prefixes": sorted({sys.prefix, sys.exec_prefix})}
        self._lock = threading.Lock()
        self._workers: list[_Worker | None] = [None] * self.n_workers
        self._pid = os.getpid()
        self._closed = False
        self._report: dict[str, Any] | None = None
        self.stats = {"runs": 0, "worker_restarts": 0}
        _LIVE.add(self)
        self._spawn_all()

    # -- life cycle -------------------------------------------------------------------------

    def _spawn_all(self) -> None:
        for i, w in enumerate(self._workers):
            if w is None:
                self._workers[i] = _Worker(self._cfg_msg)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        for w in self._workers:
            if w is not None:
                w.abandon()
        self._workers = [None] * self.n_workers
        self._pid = os.getpid()

    def _ensure_started(self) -> None:
        if self._closed:
            raise RuntimeError("Sandbox is closed")
        if self._pid != os.getpid():  # forked without register_at_fork having run
            self._after_fork_in_child()
        for i, w in enumerate(self._workers):
            if w is not None and w.proc.poll() is not None:  # died while idle (killed from outside)
                w.close_pipes()
                self._workers[i] = None
                self.stats["worker_restarts"] += 1
        self._spawn_all()

    def close(self) -> None:
        """Stop every worker (their runs are killed); idempotent."""
        # A thread stuck in run_many at interpreter exit must not block the exit for ever.
        locked = self._lock.acquire(timeout=10)
        try:
            if self._closed:
                return
            self._closed = True
            workers = [w for w in self._workers if w is not None]
            self._workers = [None] * self.n_workers
        finally:
            if locked:
                self._lock.release()
        if self._pid != os.getpid():
            for w in workers:
                w.abandon()
            return
        for w in workers:
            w.close_pipes()
        for w in workers:
            w.stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        """PIDs of the worker launchers (each the root of its slot's process tree)."""
        return [w.pid for w in self._workers if w is not None]

    def isolation_report(self) -> dict[str, Any]:
        """Which isolation mechanisms the workers run with (as the first worker reports them)."""
        with self._lock:
            self._ensure_started()
            w = self._workers[0]
            assert w is not None
            report = dict(w.wait_hello(_WATCHDOG_GRACE_S))
        report["workers"] = self.n_workers
        return report

    # -- running ----------------------------------------------------------------------------

    def run(self, code: str) -> ExecResult:
        """Run one program; see ``run_many``."""
        return self.run_many([code])[0]

    def run_many(self, codes: Sequence[str] | Iterable[str], progress: bool = False) -> list[ExecResult]:
        """Run programs in parallel over the pool; results come back in input order."""
        codes = list(codes)
        for i, c in enumerate(codes):
            if not isinstance(c, str):
                raise TypeError(f"run_many: codes[{i}] is {type(c).__name__}, not str")
        if not codes:
            return []
        bar = None
        if progress:
            bar = tqdm(total=len(codes), desc="sandbox", unit="prog")
        try:
            with self._lock:
                self._ensure_started()
                return self._run_locked(codes, bar)
        finally:
            if bar is not None:
                bar.close()

    def _run_locked(self, codes: list[str], bar: Any) -> list[ExecResult]:
        results: list[ExecResult | None] = [None] * len(codes)
        pending = deque(range(len(codes)))
        encoded: dict[int, bytes] = {}
        poller = select.poll()
        by_fd: dict[int, int] = {}
        for i, w in enumerate(self._workers):
            assert w is not None
            poller.register(w.rfd, select.POLLIN)
            by_fd[w.rfd] = i
        deaths = 0
        done = 0
        try:
            while done < len(codes):
                for w in self._workers:
                    assert w is not None
                    while pending and len(w.inflight) < _PIPELINE_DEPTH:
                        idx = pending[0]
                        data = encoded.get(idx)
                        if data is None:
                            prepared = self._prepare(idx, codes[idx])
                            if isinstance(prepared, ExecResult):  # did not compile: no run needed
                                pending.popleft()
                                results[idx] = prepared
                                done += 1
                                if bar is not None:
                                    bar.update(1)
                                continue
                            data = encoded[idx] = prepared
                        if w.inflight and len(data) > _PIPELINE_MAX_BYTES:
                            break
                        pending.popleft()
                        try:
                            w.send(idx, data)
                        except (BrokenPipeError, ConnectionResetError):
                            w.inflight.pop()  # never delivered: not this program's fault
                            pending.appendleft(idx)
                            break  # the worker's death is noticed by poll below
                timeout_ms = 1000
                for fd, _ev in poller.poll(timeout_ms):
                    i = by_fd[fd]
                    w = self._workers[i]
                    assert w is not None
                    msgs, gone = w.read()
                    for m in msgs:
                        if w.handle_control(m):
                            continue
                        idx = w.inflight.popleft()
                        w.head_since = time.monotonic()
                        if m.get("id") != idx:
                            raise RuntimeError(f"sandbox protocol: expected result {idx}, got {m.get('id')}")
                        results[idx] = _to_result(m)
                        encoded.pop(idx, None)
                        done += 1
                        deaths = 0
                        if bar is not None:
                            bar.update(1)
                    if gone:
                        deaths += 1
                        done += self._replace_worker(i, "WorkerDied", results, pending, poller, by_fd)
                now = time.monotonic()
                for i, w in enumerate(self._workers):
                    assert w is not None
                    if w.inflight and now - w.head_since > self.config.timeout_s + _WATCHDOG_GRACE_S:
                        deaths += 1
                        done += self._replace_worker(i, "WorkerHung", results, pending, poller, by_fd)
                if deaths > _MAX_CONSECUTIVE_DEATHS:
                    raise RuntimeError(f"sandbox: {deaths} workers died in a row without a result")
        except BaseException:
            # Interrupted (KeyboardInterrupt, protocol error): in-flight work is unaccounted for,
            # so the workers are replaced rather than reused.
            for i, w in enumerate(self._workers):
                if w is not None:
                    w.kill()
                    self._workers[i] = None
            raise
        self.stats["runs"] += len(codes)
        return results  # type: ignore[return-value]

    def _prepare(self, idx: int, code: str) -> bytes | ExecResult:
        """The request for one program, or its result when it is too large to send. The worker
        compiles it: a compiler crash on some pathological input would then cost a worker,
        which the pool replaces, and not the caller (measured: compiling here saves nothing)."""
        if len(code) > _MAX_CODE_CHARS:
            return ExecResult(status=ERROR, answer=None, stdout="",
                              stderr=f"program of {len(code)} characters exceeds {_MAX_CODE_CHARS}\n",
                              elapsed_s=0.0, error_type="OverflowError", exit_code=1)
        heavy = any(name in code for name in self._heavy_roots)
        return _protocol.encode({"type": "run", "id": idx, "code": code, "heavy": heavy})

    def _replace_worker(self, i: int, why: str, results: list[ExecResult | None], pending: deque[int],
                        poller: select.poll, by_fd: dict[int, int]) -> int:
        """Kill worker i, fail its current job, requeue the rest, start a new one; returns the
        number of jobs completed (0 or 1)."""
        w = self._workers[i]
        assert w is not None
        poller.unregister(w.rfd)
        del by_fd[w.rfd]
        inflight = list(w.inflight)
        had_hello = w.report is not None
        w.kill()
        if not had_hello:
            self._workers[i] = None
            raise RuntimeError(f"sandbox worker exited before it was ready (exit code {w.proc.returncode}); "
                               "see its stderr above")
        completed = 0
        if inflight:
            head = inflight.pop(0)
            results[head] = ExecResult(status=SANDBOX_ERROR, answer=None, stdout="",
                                       stderr=f"sandbox: worker {why}; it was replaced\n", elapsed_s=0.0,
                                       error_type=why)
            completed = 1
            pending.extendleft(reversed(inflight))
        nw = _Worker(self._cfg_msg)
        self._workers[i] = nw
        poller.register(nw.rfd, select.POLLIN)
        by_fd[nw.rfd] = i
        self.stats["worker_restarts"] += 1
        return completed


def _to_result(m: dict[str, Any]) -> ExecResult:
    status = m["status"]
    stdout = m["stdout"]
    return ExecResult(status=status, answer=None if status == OUTPUT_LIMIT else last_output_line(stdout),
                      stdout=stdout, stderr=m["stderr"], elapsed_s=m["elapsed_s"], error_type=m["error_type"],
                      exit_code=m["exit_code"])


# --- the shared, per-process instance ----------------------------------------------------------

_SHARED: dict[SandboxConfig, Sandbox] = {}
_SHARED_LOCK = threading.Lock()


def get_sandbox(**overrides: Any) -> Sandbox:
    """The process-wide ``Sandbox`` for this configuration (``SandboxConfig`` defaults plus
    ``overrides``), started on first use; each process (each accelerate rank, each forked child)
    gets its own."""
    cfg = SandboxConfig().replace(**overrides) if overrides else SandboxConfig()
    with _SHARED_LOCK:
        sb = _SHARED.get(cfg)
        if sb is None or sb._closed:
            sb = _SHARED[cfg] = Sandbox(cfg)
        return sb


def isolation_report(**overrides: Any) -> dict[str, Any]:
    """Which isolation mechanisms are active for ``get_sandbox(**overrides)``."""
    return get_sandbox(**overrides).isolation_report()


def _after_fork_in_child() -> None:
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()
    _SHARED.clear()
    for sb in list(_LIVE):
        sb._after_fork_in_child()


def _close_all_at_exit() -> None:
    for sb in list(_LIVE):
        if sb._pid == os.getpid():
            sb.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
