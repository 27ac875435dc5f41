"""The symbolic path of answer checking: math-verify and sympy in a worker process, under a time limit.

math-verify limits its own time with ``signal.alarm``, which only works in a process's main
thread (elsewhere it fails and every comparison silently returns False), and an alarm cannot
interrupt C code such as a huge integer power. So comparisons run in one long-lived worker
process (``rewards/_symbolic_worker.py``), started on first use: the worker's main thread gives
math-verify working alarms, and this side enforces a hard wall-clock limit by killing the worker
when a reply is late; the next check starts a fresh one. The cost is one pipe round trip per
check (measured by ``bench/rewards_throughput.py``) plus a one-off start of about a second;
only answers the numeric path cannot decide come here.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
_WORKER = Path(__file__).with_name("_symbolic_worker.py")
_START_TIMEOUT_S = 120.0


class SymbolicChecker:
    """Client of one symbolic worker process; thread-safe, fork-aware, results cached.

    ``timeout_s`` is the hard limit of one check (parsing both sides and comparing); a check
    that overruns it returns False and costs a worker restart."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, cache_size: int = 65536):
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None
        self._owner_pid = 0
        self._buf = b""
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, bool] = OrderedDict()
        self._cache_size = cache_size
        self.restarts = 0  # workers killed for overrunning their limit (for logs and tests)

    # -- process management -------------------------------------------------------------------
    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, str(_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C meant for the trainer is not delivered mid-reply
        )
        self._proc, self._owner_pid, self._buf = proc, os.getpid(), b""
        reply = self._read_line(time.monotonic() + _START_TIMEOUT_S)
        if reply is None or not json.loads(reply).get("ready"):
            self._kill()
            raise RuntimeError(f"symbolic worker {_WORKER} did not start (is math-verify installed?)")
        return proc

    def _kill(self) -> None:
        proc, self._proc, self._buf = self._proc, None, b""
        if proc is not None and self._owner_pid == os.getpid():
            proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()

    def close(self) -> None:
        """Stop the worker (it also stops when this process exits)."""
        with self._lock:
            self._kill()

    def _read_line(self, deadline: float) -> bytes | None:
        """One reply line, or None if the deadline passes or the worker dies first."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        poller = select.poll()  # not select.select: a training process may hold fds above 1024
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not poller.poll(remaining * 1000):
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _request(self, req: dict, timeout_s: float) -> bool:
        with self._lock:
            if self._proc is None or self._owner_pid != os.getpid() or self._proc.poll() is not None:
                if self._owner_pid != os.getpid():  # forked: the worker belongs to the parent
                    self._proc = None
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            # The worker's own alarms (whole seconds) cover parsing each side and comparing.
            req["timeout"] = max(1, int(timeout_s / 3))
            try:
                self._proc.stdin.write(json.dumps(req).encode() + b"\n")
                self._proc.stdin.flush()
            except BrokenPipeError:
                self._kill()
                return False
            line = self._read_line(time.monotonic() + timeout_s)
            if line is None:
                logger.warning("symbolic check over %.1fs, worker restarted: %.200r", timeout_s, req)
                self.restarts += 1
                self._kill()
                return False
            return bool(json.loads(line).get("result"))

    def _cached(self, key: tuple, req: dict, timeout_s: float | None) -> bool:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        result = self._request(req, self.timeout_s if timeout_s is None else timeout_s)
        self._cache[key] = result  # a timeout is cached too: the same expression would stall again
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    # -- checks -------------------------------------------------------------------------------
    def equivalent(self, pred: str, gold: str, timeout_s: float | None = None) -> bool:
        """math-verify's judgement that ``pred`` equals ``gold`` (LaTeX or plain expressions)."""
        return self._cached(("equiv", pred, gold), {"op": "equiv", "pred": pred, "gold": gold}, timeout_s)

    def parseable(self, text: str, timeout_s: float | None = None) -> bool:
        """Whether math-verify reads ``text`` as a mathematical object."""
        return self._cached(("parse", text), {"op": "parse", "text": text}, timeout_s)


_default: SymbolicChecker | None = None
_default_lock = threading.Lock()


def get_checker() -> SymbolicChecker:
    """The process-wide checker (one worker per process)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SymbolicChecker()
            atexit.register(_default.close)
        return _default
