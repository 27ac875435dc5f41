"""Behaviour of the sandbox API: results and statuses, batches, limits, the pool's life cycle
(threads, forks, killed workers, exit), the isolation report. The hostile corpus lives in
test_sandbox_hostile.py, the command line in test_sandbox_cli.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sandbox import ExecResult, Sandbox, SandboxConfig, get_sandbox, isolation_report
from sandbox.config import last_output_line

REPO = Path(__file__).resolve().parents[1]
LIGHT = ("math", "fractions", "itertools")  # pools that never need sympy start faster


@pytest.fixture(scope="module")
def sb():
    with Sandbox(SandboxConfig(workers=2, timeout_s=2.0, memory_mb=256, max_output_bytes=4000)) as box:
        yield box


# --- configuration and answers ---------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("timeout_s", 0), ("memory_mb", 1), ("workers", 0),
                                         ("max_open_files", 8), ("isolation", "docker"), ("modules", ("a b",))])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SandboxConfig(**{field: value})


def test_config_replace_rejects_unknown_fields():
    with pytest.raises(TypeError, match="timeout"):
        SandboxConfig().replace(timeout=3)
    assert SandboxConfig().replace(timeout_s=3).timeout_s == 3


def test_missing_module_is_an_error_before_start():
    with pytest.raises(ValueError, match="no_such_module_xyz"):
        Sandbox(SandboxConfig(modules=("math", "no_such_module_xyz")))


def test_workers_follow_local_world_size(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert SandboxConfig().resolved_workers() == 2
    assert SandboxConfig(workers=3).resolved_workers() == 3


@pytest.mark.parametrize("stdout,answer", [("42\n", "42"), ("a\n 7/2 \n\n  \n", "7/2"), ("", None), ("\n\n", None)])
def test_extract_answer_is_the_last_nonempty_line(stdout, answer):
    assert last_output_line(stdout) == answer


# --- statuses --------------------------------------------------------------------------------

CASES = [  # code, status, error_type, answer, exit_code
    ("x = 17\ny = 25\nprint(x + y)", "ok", None, "42", 0),
    ("print('intermediate')\nassert 1 + 1 == 3, 'bad step'\nprint(2)", "error", "AssertionError", "intermediate", 1),
    ("print(1 / 0)", "error", "ZeroDivisionError", None, 1),
    ("print('unclosed'", "error", "SyntaxError", None, 1),
    ("import sys\nprint(5)\nsys.exit(0)", "ok", None, "5", 0),
    ("import sys\nsys.exit(3)", "error", "SystemExit", None, 3),
    ("raise SystemExit('boom')", "error", "SystemExit", None, 1),
    ("raise KeyboardInterrupt", "error", "KeyboardInterrupt", None, 1),
    ("def f(n):\n    return f(n + 1)\nf(0)", "error", "RecursionError", None, 1),
    ("x = bytearray(1 << 40)", "memory", "MemoryError", None, 1),
    ("while True:\n    pass", "timeout", "Timeout", None, -9),
    ("print('x' * 5000)", "output_limit", "OutputLimit", None, None),
    ("import ctypes\nctypes.string_at(0)", "killed", "SIGSEGV", None, -11),
    ("import os\nos.abort()", "killed", "SIGABRT", None, -6),
    ("", "ok", None, None, 0),
    ("print(input())", "error", "EOFError", None, 1),
    ("import os\nprint(9)\nos._exit(4)", "error", "ExitCode", None, 4),
    ("print('π ≈', round(3.14159, 2))", "ok", None, "π ≈ 3.14", 0),
]


def test_statuses_error_types_and_answers(sb):
    results = sb.run_many([c[0] for c in CASES])
    for (code, status, error_type, answer, exit_code), r in zip(CASES, results, strict=True):
        assert isinstance(r, ExecResult)
        got = (r.status, r.error_type, r.exit_code if exit_code is not None else None)
        assert got == (status, error_type, exit_code), (code, got, r.stderr[-300:])
        if answer is not None or status == "ok":
            assert r.answer == answer, (code, r.answer)
        assert r.ok == (status == "ok")
    syntax = results[3]
    assert "SyntaxError" in syntax.stderr and "<program>" in syntax.stderr


def test_traceback_shows_the_program_line(sb):
    r = sb.run("a = [1, 2]\nb = a[5]")
    assert r.status == "error" and r.error_type == "IndexError"
    assert 'File "<program>", line 2' in r.stderr and "b = a[5]" in r.stderr
    assert "_server.py" not in r.stderr  # the sandbox's own frames are not shown


def test_to_dict_round_trips(sb):
    r = sb.run("print(3)")
    d = r.to_dict()
    assert set(d) >= {"status", "answer", "stdout", "stderr", "elapsed_s", "error_type"}
    assert ExecResult(**d) == r


def test_output_limit_cuts_the_flood(sb):
    r = sb.run("while True:\n    print('y' * 1000)")
    assert r.status == "output_limit" and len(r.stdout) <= 4000 and r.elapsed_s < 1.0


def test_wall_deadline_is_enforced_close_to_the_limit(sb):
    r = sb.run("import time\ntime.sleep(60)")
    assert r.status == "timeout" and 2.0 <= r.elapsed_s < 3.5


def test_cpu_limit_is_a_timeout_too():
    with Sandbox(SandboxConfig(workers=1, timeout_s=20, cpu_time_s=1, modules=LIGHT)) as box:
        r = box.run("while True:\n    pass")
    assert r.status == "timeout" and r.error_type == "CPUTimeout", (r.status, r.error_type)


# --- batches ---------------------------------------------------------------------------------

def test_run_many_keeps_input_order(sb):
    codes = [f"import time\ntime.sleep({(i % 3) * 0.01})\nprint({i} * 7)" for i in range(120)]
    results = sb.run_many(codes)
    assert [r.answer for r in results] == [str(i * 7) for i in range(120)]
    assert sb.run_many([]) == []


def test_large_programs_and_outputs_come_back_whole(sb):
    big_program = "# padding\n" * 2000 + "print('z' * 3900)"  # above the size queued per worker
    results = sb.run_many([big_program, "print(1)", big_program, "print(2)"])
    assert [r.status for r in results] == ["ok"] * 4
    assert results[0].stdout == "z" * 3900 + "\n" and results[3].answer == "2"


def test_run_many_rejects_non_strings(sb):
    with pytest.raises(TypeError, match=r"codes\[1\]"):
        sb.run_many(["print(1)", None])


def test_interpreter_paths_under_tmp_stay_visible_and_read_only(monkeypatch):
    # A checkout or venv under /tmp must survive the runs' private /tmp (it hid sympy from a
    # fresh clone in /tmp/fresh); the folder is read-only to runs and outlives the pool.
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="mf-keep-", dir="/tmp")
    os.chmod(folder, 0o755)  # mkdtemp's 0700 would shut out the runs' unprivileged uid
    try:
        Path(folder, "mf_probe_mod.py").write_text("VALUE = 41\n")
        monkeypatch.setenv("PYTHONPATH", folder)
        with Sandbox(SandboxConfig(workers=1)) as box:
            ok = box.run("import mf_probe_mod\nprint(mf_probe_mod.VALUE + 1)")
            assert (ok.status, ok.answer) == ("ok", "42"), ok.stderr
            write = box.run("import mf_probe_mod\nopen(mf_probe_mod.__file__, 'a').write('x')\nprint('wrote')")
            assert write.status == "error" and write.answer != "wrote", write.stderr
            report = box.isolation_report()
        assert Path(folder, "mf_probe_mod.py").read_text() == "VALUE = 41\n"
        if report["private_tmp"]:
            assert folder in report["kept_in_tmp"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_sympy_program_runs_in_the_heavy_template(sb):
    r = sb.run("import sympy as sp\nx = sp.symbols('x')\nprint(sp.solve(2 * x - 10, x)[0])")
    assert r.status == "ok" and r.answer == "5", r.stderr


def test_modules_not_preloaded_still_import(sb):
    r = sb.run("import json, textwrap\nprint(json.dumps({'a': [1, 2]}))")
    assert r.status == "ok" and r.answer == '{"a": [1, 2]}', r.stderr


def test_scratch_folder_is_writable_fresh_and_private(sb):
    code = ("import os, tempfile\nprint(sorted(os.listdir('.')))\nopen('notes.txt', 'w').write('hi')\n"
            "with tempfile.NamedTemporaryFile(dir=None) as f:\n    f.write(b'x')\n"
            "print(open('notes.txt').read(), os.getcwd() == os.environ['HOME'])")
    first, second = sb.run_many([code, code])
    for r in (first, second):
        assert r.status == "ok", r.stderr
        assert r.stdout.splitlines() == ["[]", "hi True"]


def test_background_processes_do_not_outlive_their_run(sb):
    code = "import subprocess\nsubprocess.Popen(['sleep', '30'])\nprint('started')"
    r = sb.run(code)
    assert r.status == "ok"
    tree = {w: _descendants(w) for w in sb.worker_pids()}
    assert all(len(procs) <= 2 for procs in tree.values()), tree  # init and heavy, nothing else


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


# --- life cycle ------------------------------------------------------------------------------

def _alive(pid: int | str) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _all_gone(pids: list, wait_s: float = 5.0) -> bool:
    deadline = time.time() + wait_s
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return not any(_alive(p) for p in pids)


def test_workers_are_fresh_interpreters_not_forks_of_the_caller(sb):
    for pid in sb.worker_pids():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"from sandbox._server import main; main()" in cmdline
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"PYTEST_CURRENT_TEST" not in environ  # none of the caller's environment


def test_concurrent_calls_from_threads(sb):
    out: dict[int, list[str | None]] = {}

    def work(k: int) -> None:
        out[k] = [r.answer for r in sb.run_many([f"print({k} * 100 + {i})" for i in range(40)])]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {k: [str(k * 100 + i) for i in range(40)] for k in range(4)}


def test_a_killed_worker_is_replaced(sb):
    victim = sb.worker_pids()[0]
    os.killpg(victim, signal.SIGKILL)
    time.sleep(0.2)
    results = sb.run_many([f"print({i})" for i in range(20)])
    assert [r.answer for r in results] == [str(i) for i in range(20)]
    assert victim not in sb.worker_pids() and sb.stats["worker_restarts"] >= 1


def test_get_sandbox_is_shared_and_rebuilt_after_fork():
    a = get_sandbox(workers=1, modules=LIGHT)
    assert get_sandbox(workers=1, modules=LIGHT) is a
    assert a.run("print(6 * 7)").answer == "42"
    parent_workers = a.worker_pids()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a dataloader worker, say: it must get its own pool, not share the parent's pipes
        try:
            b = get_sandbox(workers=1, modules=LIGHT)
            res = b.run("print(7 * 6)")
            ok = res.answer == "42" and b is not a and not set(b.worker_pids()) & set(parent_workers)
            os.write(w, b"ok" if ok else repr(res).encode())
            b.close()
        finally:
            os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    msg = os.read(r, 4096)
    os.close(r)
    assert status == 0 and msg == b"ok", msg
    assert a.run("print(1)").answer == "1" and a.worker_pids() == parent_workers
    a.close()
    assert get_sandbox(workers=1, modules=LIGHT) is not a


def test_closed_sandbox_refuses_work():
    box = Sandbox(SandboxConfig(workers=1, modules=LIGHT))
    pids = box.worker_pids()
    box.close()
    box.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        box.run("print(1)")
    assert _all_gone(pids)


def test_workers_end_with_the_caller_even_without_close():
    script = ("import sys; sys.path.insert(0, sys.argv[1])\nfrom sandbox import Sandbox, SandboxConfig\n"
              "sb = Sandbox(SandboxConfig(workers=2, modules=('math',)))\nprint(sb.run('print(1)').answer)\n"
              "print(' '.join(map(str, sb.worker_pids())))\n")
    out = subprocess.run([sys.executable, "-c", script, str(REPO)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    answer, pids = out.stdout.splitlines()
    assert answer == "1"
    assert _all_gone(pids.split())


def test_workers_end_when_the_caller_is_killed():
    script = ("import sys, time; sys.path.insert(0, sys.argv[1])\nfrom sandbox import Sandbox, SandboxConfig\n"
              "sb = Sandbox(SandboxConfig(workers=1, modules=('math',)))\nsb.run('print(1)')\n"
              "print(' '.join(map(str, sb.worker_pids())), flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(REPO)], stdout=subprocess.PIPE, text=True)
    pids = proc.stdout.readline().split()
    proc.kill()
    proc.wait()
    assert pids and _all_gone(pids)


def test_isolation_report_names_the_active_mechanisms(sb):
    report = sb.isolation_report()
    for key in ("mode", "network", "netns", "mountns", "pidns", "userns", "uid_drop", "seccomp",
                "landlock", "readonly_root", "private_tmp", "nproc_limit", "workers"):
        assert key in report
    assert report["network"] in ("netns", "seccomp")
    if os.geteuid() == 0:  # this machine and CI: root with namespaces
        assert report["mode"] == "root-namespaces" and report["uid_drop"] and report["pidns"]
    assert isolation_report(workers=1, modules=LIGHT)["workers"] == 1
