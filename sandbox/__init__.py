"""Run untrusted, model-written Python isolated by the operating system, and fast.

    from sandbox import Sandbox, SandboxConfig, get_sandbox
    with Sandbox(SandboxConfig(timeout_s=5)) as sb:
        results = sb.run_many(programs)        # list[ExecResult], input order

See docs/sandbox.md for the threat model and what enforces what. The names below are imported
lazily so that the worker processes (``python -m sandbox._server``) load none of the client code.
"""

from __future__ import annotations

TYPE_CHECKING = False  # (typing is not imported: the worker template must stay small)
if TYPE_CHECKING:
    from typing import Any

    from sandbox.config import ExecResult, SandboxConfig
    from sandbox.pool import Sandbox, get_sandbox, isolation_report

__all__ = ["ExecResult", "Sandbox", "SandboxConfig", "get_sandbox", "isolation_report"]

_HOME = {
    "ExecResult": "sandbox.config",
    "SandboxConfig": "sandbox.config",
    "Sandbox": "sandbox.pool",
    "get_sandbox": "sandbox.pool",
    "isolation_report": "sandbox.pool",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        import importlib  # deferred: workers import this package, and their template must stay small

        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
