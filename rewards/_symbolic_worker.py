"""Worker process of the symbolic path: math-verify comparisons, one JSON request per line.

Started by ``rewards.symbolic`` with ``python <this file>``; self-contained (stdlib and
math-verify only) so that it starts without the project on ``sys.path``. It runs in its own
main thread, so math-verify's ``signal.alarm`` timeouts work here even when the caller is a
training process calling from any thread; the caller also kills this process when it overruns
(a big-integer power in C code can ignore the alarm), and an address-space limit turns a
runaway allocation into a ``MemoryError``.

Requests: ``{"op": "equiv", "pred": str, "gold": str, "timeout": int}`` or
``{"op": "parse", "text": str, "timeout": int}``; replies ``{"result": bool}`` or
``{"result": false, "error": str}``. The first line written is ``{"ready": true}``.
"""

from __future__ import annotations

import io
import json
import os
import sys

# This file's folder holds the rewards modules; they must not shadow anything imported here.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

_LATEX_MARKERS = ("$", "\\(", "\\[", "\\boxed")


def _limit_memory() -> None:
    mb = int(os.environ.get("MATHFORGE_SYMBOLIC_MEMORY_MB", "2048"))
    if mb <= 0:
        return
    try:
        import resource  # deferred: Unix-only; the ImportError below covers other systems

        resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))
    except (ImportError, ValueError, OSError):
        pass


def _parse(text: str, timeout: int):
    from math_verify import parse  # deferred: heavy (sympy, latex2sympy), loaded in the worker only

    s = text.strip()
    if not any(m in s for m in _LATEX_MARKERS):
        # A bare answer: read it as LaTeX math (x^2+2x+1, \frac{6}{4}, 3*6); Python's ** is ^ there.
        s = f"${s.replace('**', '^')}$"
    return parse(s, fallback_mode="no_fallback", parsing_timeout=timeout)


def _handle(req: dict) -> dict:
    from math_verify import verify  # deferred: heavy, loaded in the worker only

    timeout = max(1, int(req.get("timeout", 3)))
    if req["op"] == "parse":
        return {"result": bool(_parse(req["text"], timeout))}
    if req["op"] == "equiv":
        gold = _parse(req["gold"], timeout)
        pred = _parse(req["pred"], timeout) if gold else []
        return {"result": bool(gold and pred and verify(gold, pred, timeout_seconds=timeout))}
    return {"result": False, "error": f"unknown op {req['op']!r}"}


def main() -> None:
    _limit_memory()
    # math-verify prints parse errors to stdout; keep stdout for replies only.
    out = sys.stdout
    sys.stdout = io.StringIO()
    # Warm up before "ready" (imports, the LaTeX grammar, sympy's caches: about a second), so that
    # start-up is not charged to the first check's time limit.
    _handle({"op": "equiv", "pred": "\\frac{(x+1)^2}{2}", "gold": "x^2/2+x+1/2", "timeout": 30})
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            reply = _handle(json.loads(line))
        except MemoryError:
            reply = {"result": False, "error": "MemoryError"}
        except Exception as e:  # one bad request must not end the worker
            reply = {"result": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout = io.StringIO()
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
