"""Configuration and result types of the sandbox (no process machinery here).

``SandboxConfig`` holds the limits, the pre-imported modules and the isolation mode;
``ExecResult`` is what one execution returns. Both are plain dataclasses so that callers (rewards,
eval, the CLI) can build, compare and serialise them without starting anything.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

# Result statuses. Only "ok" means the program ran to a normal exit with status 0.
OK = "ok"
ERROR = "error"  # uncaught exception, SyntaxError, non-zero exit code
TIMEOUT = "timeout"  # wall-clock deadline (error_type "Timeout") or CPU limit ("CPUTimeout")
MEMORY = "memory"  # MemoryError: the address-space limit was hit
OUTPUT_LIMIT = "output_limit"  # stdout or stderr exceeded max_output_bytes; the run was killed
KILLED = "killed"  # ended by a signal the sandbox did not send (SIGSEGV, SIGABRT, its own kill)
SANDBOX_ERROR = "sandbox_error"  # the worker died or failed; the pool replaced it
STATUSES = (OK, ERROR, TIMEOUT, MEMORY, OUTPUT_LIMIT, KILLED, SANDBOX_ERROR)

DEFAULT_MODULES: tuple[str, ...] = (
    "math", "cmath", "fractions", "decimal", "itertools", "functools", "collections", "statistics",
    "operator", "heapq", "bisect", "random", "re", "string", "datetime", "sympy",
)
# Modules whose import makes the template large. Forking a process costs in proportion to the
# memory it has mapped (measured here: ~1,300 forks/s from a plain interpreter, ~250/s once sympy
# is imported), so these live in a second template per worker that only programs naming one of
# them are sent to; every other program forks from the small template.
# random and statistics are here too: random's at-fork hook reseeds it in every child (a urandom
# read and a Mersenne Twister init in each run), which only runs that name them should pay.
DEFAULT_HEAVY_MODULES: tuple[str, ...] = (
    "sympy", "mpmath", "numpy", "scipy", "networkx", "pandas", "random", "statistics")
ISOLATION_MODES = ("auto", "root", "userns", "none")


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and set-up of a ``Sandbox``; every limit applies to each execution separately.

    timeout_s: wall-clock limit; the whole process group is SIGKILLed at the deadline.
    cpu_time_s: CPU-time limit (RLIMIT_CPU, whole seconds, rounded up); None means timeout_s.
    memory_mb: address space a program may add on top of the pre-imported interpreter (RLIMIT_AS).
    max_output_bytes: cap on stdout and on stderr each; above it the run is killed.
    max_processes: processes plus threads the program may have at once (RLIMIT_NPROC).
    workers: parallel workers; None sizes the pool to the CPUs this process may use, divided by
        the number of local ranks (LOCAL_WORLD_SIZE) when run under ``accelerate launch``.
    modules: imported once in the worker templates so that a run does not pay for them; other
        imports still work (security does not rest on restricting imports).
    heavy_modules: the subset of ``modules`` kept in a second template (see DEFAULT_HEAVY_MODULES);
        a program is sent there when its text names one of them.
    lazy_heavy: start the heavy template at the first program that needs it (its first run waits
        for the import, a second or so) instead of at start-up; for short-lived pools.
    isolation: "auto" (the strongest the system allows), "root" (require root + namespaces),
        "userns" (unprivileged user namespace), "none" (no namespaces: seccomp, Landlock, rlimits
        and, when root, a dropped uid). See docs/sandbox.md.
    scratch_mb: size of the per-worker scratch tmpfs (when a mount namespace is available).
    max_file_mb: largest file a program may write (RLIMIT_FSIZE).
    max_open_files: RLIMIT_NOFILE.
    """

    timeout_s: float = 5.0
    cpu_time_s: float | None = None
    memory_mb: int = 1024
    max_output_bytes: int = 64_000
    max_processes: int = 16
    workers: int | None = None
    modules: tuple[str, ...] = DEFAULT_MODULES
    heavy_modules: tuple[str, ...] = DEFAULT_HEAVY_MODULES
    lazy_heavy: bool = False
    isolation: str = "auto"
    scratch_mb: int = 64
    max_file_mb: int = 16
    max_open_files: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", tuple(self.modules))
        object.__setattr__(self, "heavy_modules", tuple(self.heavy_modules))
        checks = [
            ("timeout_s", self.timeout_s > 0 and math.isfinite(self.timeout_s)),
            ("cpu_time_s", self.cpu_time_s is None or (self.cpu_time_s > 0 and math.isfinite(self.cpu_time_s))),
            ("memory_mb", self.memory_mb >= 16),
            ("max_output_bytes", self.max_output_bytes >= 1),
            ("max_processes", self.max_processes >= 1),
            ("workers", self.workers is None or self.workers >= 1),
            ("scratch_mb", self.scratch_mb >= 1),
            ("max_file_mb", self.max_file_mb >= 1),
            ("max_open_files", self.max_open_files >= 32),
        ]
        for name, good in checks:
            if not good:
                raise ValueError(f"SandboxConfig.{name}: invalid value {getattr(self, name)!r}")
        if self.isolation not in ISOLATION_MODES:
            raise ValueError(f"SandboxConfig.isolation: {self.isolation!r} is not one of {ISOLATION_MODES}")
        for name in self.modules + self.heavy_modules:
            if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
                raise ValueError(f"SandboxConfig.modules: {name!r} is not a module name")

    @property
    def cpu_limit_s(self) -> int:
        return max(1, math.ceil(self.cpu_time_s if self.cpu_time_s is not None else self.timeout_s))

    def resolved_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        try:
            local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        except ValueError:
            local_ranks = 1
        return max(1, cpus // local_ranks)

    def replace(self, **overrides: Any) -> SandboxConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"SandboxConfig has no field(s) {unknown}; known: {sorted(known)}")
        return SandboxConfig(**{**asdict(self), **overrides})


def last_output_line(stdout: str) -> str | None:
    """The PoT answer: the last non-empty line of stdout, stripped (None when there is none)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line:
            return line
    return None


@dataclass
class ExecResult:
    """Outcome of one execution.

    status: one of STATUSES; "ok" only when the program exited normally with status 0.
    answer: last non-empty stdout line, stripped (None when stdout has none, and for
        "output_limit", whose stdout was cut). Check ``status`` before trusting it.
    error_type: exception class name ("AssertionError", "SyntaxError", ...), "Timeout",
        "CPUTimeout", "OutputLimit", a signal name ("SIGSEGV") or "WorkerDied"; None when ok.
    exit_code: the process exit status, or minus the signal number that ended it.
    """

    status: str
    answer: str | None
    stdout: str
    stderr: str
    elapsed_s: float
    error_type: str | None = None
    exit_code: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
