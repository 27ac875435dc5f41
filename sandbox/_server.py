"""Worker process of the sandbox, started fresh (never forked from the caller) by ``Sandbox``:
``python -S -P -c "from sandbox._server import main; main()"``, talking over its stdin/stdout.

Process tree of one worker slot (see docs/sandbox.md):

    launcher          main(): enters the namespaces (unshare) and forks init, then only waits
      init            PID 1 of the new PID namespace: mounts, pre-imports the light modules,
                      applies seccomp (and Landlock when runs get their own uid) to itself, and
                      is the template of light runs; forwards heavy runs to
        heavy         forked from init; pre-imports sympy & co; the template of heavy runs
          run child   one per execution, forked from heavy
        run child     one per execution, forked from init

A run child inherits what the template set once (seccomp, no_new_privs, rlimits, environment,
its file descriptors 0-4), takes a process group of its own, drops privileges (a per-worker uid when root; no capabilities in a user
namespace), sets its CPU limit, then ``exec``s the pre-compiled program in a fresh globals dict.
Its template enforces the deadline and the output cap, SIGKILLs the process group and every
process the run left behind (the template is the subreaper of all of them) and empties the
scratch folder.

Every import this module needs happens at the top: once the mounts are set up, directories such
as /root and /home are hidden and only the interpreter's own paths remain visible.
"""

from __future__ import annotations

import builtins
import fcntl
import gc
import linecache
import os
import re
import resource
import select
import signal
import stat
import struct
import sys
import time
import traceback

from sandbox import _linux, _protocol
from sandbox._linux import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    MS_BIND,
    MS_MOVE,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
)

TYPE_CHECKING = False  # (not typing.TYPE_CHECKING: the template must stay small, see Runner)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

RUN_UID_BASE = 1_800_000_000  # + the launcher's PID: a uid no account uses, distinct per worker
USERNS_INNER_ID = 1000
PROGRAM_NAME = "<program>"
RUN_PATH = "/usr/local/bin:/usr/bin:/bin"
_ERROR_TYPE_RE = re.compile(r"^[A-Za-z_][\w.]{0,99}$")
_HIGH_FD = 10  # long-lived template fds are moved above the 0-4 range the run child rebuilds
MAX_CODE_CHARS = 1 << 20
FLOOD_CHECK_S = 0.1  # how often a long run's pipes are checked for a flood past the cap
_FIONREAD = 0x541B
_FDS = {"ctrl_out": 1, "diag": 2}  # where init's protocol and diagnostics went (moved up)

# Result statuses, duplicated from sandbox.config so the server imports nothing it does not need.
OK, ERROR, TIMEOUT, MEMORY, OUTPUT_LIMIT, KILLED, SANDBOX_ERROR = (
    "ok", "error", "timeout", "memory", "output_limit", "killed", "sandbox_error")


def _high_fd(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(fd)
    return new


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths not inside another one of them, sorted."""
    paths = sorted(set(paths))
    return [p for p in paths if not any(q != p and _is_under(p, q) for q in paths)]


# --- namespaces (launcher) -------------------------------------------------------------------

def enter_namespaces(mode: str) -> dict[str, Any]:
    """unshare() into the strongest set of namespaces ``mode`` allows; returns what was entered."""
    info: dict[str, Any] = {"userns": False, "netns": False, "mountns": False, "pidns": False,
                            "ipcns": False, "errors": []}
    if mode == "none":
        return info
    base = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    attempts: list[tuple[bool, int]] = []
    if os.geteuid() == 0 and mode in ("auto", "root"):
        attempts += [(False, base | CLONE_NEWPID | CLONE_NEWCGROUP), (False, base | CLONE_NEWPID),
                     (False, CLONE_NEWNS | CLONE_NEWNET)]
    if mode in ("auto", "userns"):
        attempts += [(True, base | CLONE_NEWPID | CLONE_NEWCGROUP), (True, base | CLONE_NEWPID),
                     (True, CLONE_NEWNS | CLONE_NEWNET), (True, CLONE_NEWNET)]
    uid, gid = os.getuid(), os.getgid()
    for userns, flags in attempts:
        try:
            _linux.unshare(flags | (CLONE_NEWUSER if userns else 0))
        except OSError as e:
            info["errors"].append(f"unshare({'user+' if userns else ''}{flags:#x}): {e.strerror}")
            continue
        if userns:
            # Map one id: the caller's own. USERNS_INNER_ID is not 0, so an execve inside cannot
            # regain capabilities through the root-uid rule.
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{USERNS_INNER_ID} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{USERNS_INNER_ID} {gid} 1")
        info.update(userns=userns, netns=bool(flags & CLONE_NEWNET), mountns=bool(flags & CLONE_NEWNS),
                    pidns=bool(flags & CLONE_NEWPID), ipcns=bool(flags & CLONE_NEWIPC))
        return info
    if mode in ("root", "userns"):
        raise OSError(f"isolation={mode!r} requested but unavailable: {'; '.join(info['errors'])}")
    return info


# --- mounts (init) ---------------------------------------------------------------------------

def setup_mounts(scratch_mb: int, keep: list[str], report: dict[str, Any]) -> None:
    """Private /tmp scratch tmpfs, /root and /home hidden (the interpreter's paths re-bound),
    every other mount read-only, and a /proc of the new PID namespace."""
    os.umask(0o022)
    _linux.mount(None, "/", None, MS_REC | MS_PRIVATE)
    # The interpreter may load from under /tmp (a checkout or venv there): hold those folders
    # open, mount the private /tmp over them, then bind them back from the held descriptors.
    in_tmp = _outermost(p for p in keep if _is_under(p, "/tmp") and p != "/tmp")
    held = [(os.open(p, os.O_PATH | os.O_DIRECTORY), p) for p in in_tmp]
    _linux.mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={scratch_mb}m,mode=0755")
    report["private_tmp"] = True
    for fd, p in held:
        try:
            os.makedirs(p, 0o755, exist_ok=True)
            _linux.mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
        except OSError as e:
            report["notes"].append(f"could not keep {p} visible under the private /tmp: {e}")
        finally:
            os.close(fd)
    report["kept_in_tmp"] = in_tmp
    hidden = []
    stash = "/tmp/.stash"
    os.mkdir(stash)
    for hide in ("/root", "/home"):
        if not os.path.isdir(hide) or os.path.islink(hide):
            continue
        inner = _outermost(p for p in keep if _is_under(p, hide) and p != hide)
        staged = []
        try:
            for p in inner:
                s = f"{stash}/{len(staged)}"
                os.mkdir(s)
                _linux.mount(p, s, None, MS_BIND | MS_REC)
                staged.append((s, p))
            _linux.mount("tmpfs", hide, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
            for s, p in staged:
                os.makedirs(p, 0o755, exist_ok=True)
                _linux.mount(s, p, None, MS_MOVE)
            hidden.append(hide)
        except OSError as e:
            report["notes"].append(f"could not hide {hide}: {e}")
    for entry in [*os.listdir(stash), ""]:
        try:  # a bind left here by a failed hide is busy: it stays (it is read-only below)
            os.rmdir(f"{stash}/{entry}" if entry else stash)
        except OSError:
            pass
    report["hidden_dirs"] = hidden
    failures = []
    for mp, opts, _fstype in _linux.mountinfo():
        if mp == "/tmp" or _is_under(mp, "/proc"):
            continue
        flags = _linux.mount_options(opts)
        try:
            _linux.mount(None, mp, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError:
            failures.append(mp)
    report["readonly_root"] = "/" not in failures
    if failures:
        report["notes"].append(f"could not make read-only: {failures[:10]}")


# --- one execution (templates) ---------------------------------------------------------------

class Runner:
    """Forks and supervises run children from the current (template) process.

    After a fork, every page either process writes while the other is alive costs a copy (a few
    microseconds each on a VM, the dominant cost of a run), so the template does all it can
    *before* forking (compile, the globals dict, the working directory, the inherited limits)
    and then sleeps in ``poll`` on a pidfd until the child exits, waking every FLOOD_CHECK_S of
    a long run to check the deadline, a flood and its parent. The output stays in the pipes
    meanwhile: they hold more than ``max_output_bytes``, so a program within the cap never
    blocks, and one beyond it is found (and killed) within FLOOD_CHECK_S.
    """

    def __init__(self, cfg: dict[str, Any], scratch_root: str, uid: int | None, drop_caps: bool,
                 child_landlock: _linux.LandlockRuleset | None, pdeathsig: bool, ctrl_fd: int,
                 sweep_all: bool, clear_root: bool) -> None:
        self.cfg = cfg
        self.scratch_root = scratch_root
        # One run at a time per template, so one scratch folder, kept (its inode is what the
        # Landlock rule names) and emptied after every run.
        self.scratch = scratch_path(scratch_root)
        self.uid = uid
        self.drop_caps = drop_caps
        self.child_landlock = child_landlock
        self.first_free_fd = 4 if child_landlock is None else 5  # what a run closes from
        self.pdeathsig = pdeathsig
        self.null_fd = _high_fd(os.open(os.devnull, os.O_RDWR))
        self.set_ctrl_fd(ctrl_fd)
        self.sweep_all = sweep_all  # kill(-1) sweeps, when /proc cannot list our children
        self.clear_root = clear_root  # runs can write the scratch root itself (no uid drop)
        self.keep: set[int] = set()
        self.timeout = float(cfg["timeout_s"])
        self.cap = int(cfg["max_output_bytes"])
        self.cpu_limit = int(cfg["cpu_limit_s"])
        self.cpu_rlimit = (self.cpu_limit, self.cpu_limit + 1)
        self.pipe_size = _pipe_size_for(self.cap + 1)
        self.first_wait_ms = min(self.timeout, FLOOD_CHECK_S) * 1000 + 1
        self.out, self.err = bytearray(), bytearray()
        self.children_fd = -1
        self.scratch_ctime = -1
        self.open_pipes()

    def set_ctrl_fd(self, fd: int) -> None:
        """The pipe requests come from: watched during a run for its writer going away."""
        self.ctrl_fd = fd
        self.poller = select.poll()
        self.poller.register(fd, 0)  # POLLHUP only

    def reopen_children_file(self) -> None:
        """Keep /proc/self/task/<pid>/children open: one pread per sweep (call after a fork)."""
        if self.children_fd >= 0:
            os.close(self.children_fd)
        self.children_fd = _high_fd(os.open(f"/proc/self/task/{os.getpid()}/children", os.O_RDONLY))

    def limit_memory(self) -> None:
        """RLIMIT_AS, on the template itself (a run inherits it): what the template maps now
        plus memory_mb. Call once its imports are done; it never needs more itself."""
        with open("/proc/self/status") as f:
            vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
        limit = (vm_kb << 10) + (int(self.cfg["memory_mb"]) << 20)
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)  # a heavy template re-forked from a limited init
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def warm_up(self) -> None:
        """Run the code paths of a run once in the template, so that lazily built state is
        shared by every child instead of being built (and copied) in each."""
        for code in ("pass", "print(1)", "1/0", "import sys; sys.exit(3)"):
            self.execute(code)

    def open_pipes(self) -> None:
        """Lay out fds 0-4 as a run needs them, on the template itself, so that a run child
        only closes the rest: 0 /dev/null, 1 stdout pipe, 2 stderr pipe, 3 error-type pipe, 4 the
        Landlock ruleset (when a run applies it). The pipes are kept from run to run: a run's
        output is drained after it, once nothing that could write is alive. The template
        writes nothing between runs but compile-time warnings (a SyntaxWarning), which belong
        to the run that follows, as they would with ``python -c``. Call after a fork, once the
        template's own descriptors are above _HIGH_FD."""
        for fd in getattr(self, "pipe_read_fds", ()):
            os.close(fd)
        reads = []
        for target in (1, 2, 3):
            r, w = os.pipe()
            reads.append(_high_fd(r))
            os.dup2(w, target, inheritable=target != 3)  # fd 3 is not passed on to exec'd programs
            os.close(w)
        self.out_r, self.err_r, self.st_r = reads
        self.pipe_read_fds = reads
        os.dup2(self.null_fd, 0)
        if self.child_landlock is not None:
            os.dup2(self.child_landlock.fd, 4, inheritable=False)
        for fd in reads:
            os.set_blocking(fd, False)
        if self.pipe_size > 65536:
            fcntl.fcntl(self.out_r, fcntl.F_SETPIPE_SZ, self.pipe_size)
            fcntl.fcntl(self.err_r, fcntl.F_SETPIPE_SZ, self.pipe_size)

    def execute(self, code: str) -> dict[str, Any]:
        """Run one program; a program that does not compile gets its result without a fork."""
        t0 = time.monotonic()
        try:
            if len(code) > MAX_CODE_CHARS:
                raise OverflowError(f"program of {len(code)} characters exceeds {MAX_CODE_CHARS}")
            code_obj = compile(code, PROGRAM_NAME, "exec", dont_inherit=True, optimize=0)
        except BaseException as e:  # noqa: BLE001 - SyntaxError and friends are the result
            stderr = "".join(traceback.format_exception(type(e), e, None))
            return {"type": "result", "status": ERROR, "error_type": type(e).__name__, "exit_code": 1,
                    "elapsed_s": time.monotonic() - t0, "stdout": "", "stderr": stderr}
        namespace = {"__name__": "__main__", "__builtins__": builtins, "__doc__": None,
                     "__package__": None, "__spec__": None, "__loader__": None}
        os.chdir(self.scratch)
        deadline = time.monotonic() + self.timeout
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            self._child(code, code_obj, namespace)  # never returns
        # Until the child exits, touch as little as possible: each page written here is copied.
        pidfd = os.pidfd_open(pid)
        self.poller.register(pidfd, select.POLLIN)
        self.poller.poll(self.first_wait_ms)
        status = error_type = None
        while True:
            done, wstatus, rusage = os.wait4(pid, os.WNOHANG)
            now = time.monotonic()
            if done:
                break
            if now >= deadline:
                status, error_type = TIMEOUT, "Timeout"
                break
            if self.pipe_size and (_pending(self.out_r) > self.cap or _pending(self.err_r) > self.cap):
                status, error_type = OUTPUT_LIMIT, "OutputLimit"
                break
            if self._parent_gone():
                self._kill(pid)
                self.sweep()
                os._exit(0)
            if not self.pipe_size:  # the cap exceeds what a pipe can hold: read as it comes
                self._drain(self.out_r, self.out)
                self._drain(self.err_r, self.err)
                if len(self.out) > self.cap or len(self.err) > self.cap:
                    status, error_type = OUTPUT_LIMIT, "OutputLimit"
                    break
            self.poller.poll(min(deadline - now, FLOOD_CHECK_S) * 1000 + 1)
        elapsed = now - t0
        self.poller.unregister(pidfd)
        os.close(pidfd)
        self._kill(pid)  # the rest of its process group
        if not done:
            _, wstatus, rusage = os.wait4(pid, 0)
        self.sweep()  # now nothing that could write to the pipes is alive
        os.chdir("/")
        out, err = self.out, self.err
        self.out, self.err = bytearray(), bytearray()
        self._drain(self.out_r, out)
        self._drain(self.err_r, err)
        reported = bytearray()
        self._drain(self.st_r, reported)
        if len(out) > self.cap or len(err) > self.cap:
            status, error_type = OUTPUT_LIMIT, "OutputLimit"
        exit_code = os.waitstatus_to_exitcode(wstatus)
        if status is None:
            status, error_type = self._classify(exit_code, rusage, reported)
        self._clear_scratch()
        return {
            "type": "result",
            "status": status,
            "error_type": error_type,
            "exit_code": exit_code,
            "elapsed_s": elapsed,
            "stdout": out[: self.cap].decode("utf-8", "replace"),
            "stderr": err[: self.cap].decode("utf-8", "replace"),
        }

    def _parent_gone(self) -> bool:
        return bool(select.select([self.ctrl_fd], [], [], 0)[0]) and _pending(self.ctrl_fd) == 0

    def _drain(self, fd: int, buf: bytearray) -> None:
        """Append what the pipe holds (at most just past the cap; the rest is discarded)."""
        n = _pending(fd)
        while n:
            data = os.read(fd, n)
            if len(buf) <= self.cap:
                buf += data
            n = _pending(fd)

    def _classify(self, exit_code: int, rusage: Any, reported_raw: bytes) -> tuple[str, str | None]:
        if exit_code == 0:
            return OK, None
        if exit_code > 0:
            reported = reported_raw[:200].decode("ascii", "replace").strip()
            if not _ERROR_TYPE_RE.match(reported):
                reported = "ExitCode"
            return (MEMORY if reported == "MemoryError" else ERROR), reported
        sig = -exit_code
        cpu = rusage.ru_utime + rusage.ru_stime
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= self.cpu_limit):
            return TIMEOUT, "CPUTimeout"
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"SIG{sig}"
        return KILLED, name

    def _kill(self, pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)  # the run made its own group: its id is its pid
        except (ProcessLookupError, PermissionError):
            pass

    def children(self) -> list[int]:
        if self.children_fd < 0:
            self.reopen_children_file()
        return [int(p) for p in os.pread(self.children_fd, 65536, 0).split()]

    def sweep(self) -> None:
        """SIGKILL and reap every process a run left behind (daemons, setsid escapees, bombs):
        as subreaper (or PID 1), this template is the parent of all of them once orphaned."""
        if self.sweep_all:
            self._sweep_all()
            return
        for _ in range(10_000):
            kids = [p for p in self.children() if p not in self.keep]
            if not kids:
                return
            for p in kids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for p in kids:
                try:
                    os.waitpid(p, 0)
                except ChildProcessError:
                    pass

    def _sweep_all(self) -> None:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.keep:
                self.keep.discard(pid)
                self.on_keep_died(pid)

    def on_keep_died(self, pid: int) -> None:  # overridden by Init for the heavy template
        pass

    def _clear_scratch(self) -> None:
        try:
            st = os.stat(self.scratch)
        except FileNotFoundError:  # removed (only possible without uid drop or Landlock)
            make_scratch(self.scratch_root, self.uid)
            st = os.stat(self.scratch)
        # The folder starts each run empty: an unchanged ctime (which a program cannot set)
        # means nothing was created, removed or re-permissioned in it.
        if st.st_ctime_ns != self.scratch_ctime or stat.S_IMODE(st.st_mode) != 0o700:
            self._empty_scratch()
            self.scratch_ctime = os.stat(self.scratch).st_ctime_ns
        if self.clear_root:
            self._clear_root()

    def _empty_scratch(self) -> None:
        os.chmod(self.scratch, 0o700)  # a run may have locked it for the next one
        with os.scandir(self.scratch) as it:
            entries = list(it)
        for entry in entries:
            _remove_entry(entry)

    def _clear_root(self) -> None:
        """Without a uid of its own or Landlock, a run can write next to its folder too."""
        kept = self.cfg.get("kept_in_tmp", ())  # read-only binds of the interpreter's paths
        for entry in os.scandir(self.scratch_root):
            if entry.path != self.scratch and not any(_is_under(k, entry.path) for k in kept):
                _remove_entry(entry)

    # -- the run child --------------------------------------------------------------------

    def _child(self, code: str, code_obj: Any, namespace: dict[str, Any]) -> None:
        try:
            # A process group of its own, for killpg; not setsid, which (with the scheduler's
            # autogroups) builds a task group per session and takes milliseconds now and then.
            os.setpgid(0, 0)
            os.closerange(self.first_free_fd, 1 << 20)  # 0-3 (and 4) are laid out already
            if self.uid is not None:
                os.setresgid(self.uid, self.uid, self.uid)
                os.setresuid(self.uid, self.uid, self.uid)
            elif self.drop_caps:
                _linux.drop_capabilities()
            resource.setrlimit(resource.RLIMIT_CPU, self.cpu_rlimit)
            if self.pdeathsig:  # without a PID namespace nothing else ends a run whose template died
                _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            if self.child_landlock is not None:
                self.child_landlock.restrict_self(4)
                os.close(4)
        except BaseException as e:  # noqa: BLE001 - report any set-up failure, then leave
            os.write(2, f"sandbox: run set-up failed: {e!r}\n".encode())
            os.write(3, b"SandboxSetupError")
            os._exit(125)
        os._exit(run_program(code, code_obj, namespace))


def _pending(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(fd, _FIONREAD, b"\0\0\0\0"))[0]


def scratch_path(scratch_root: str) -> str:
    return f"{scratch_root}/run"


def make_scratch(scratch_root: str, uid: int | None) -> str:
    path = scratch_path(scratch_root)
    os.mkdir(path, 0o700)
    if uid is not None:
        os.chown(path, uid, uid)
    return path


def _pipe_size_for(nbytes: int) -> int:
    """A pipe capacity (power of two pages) holding ``nbytes``, or 0 when the system's
    pipe-max-size is smaller (the output is then read as it comes)."""
    size = 65536  # the Linux default
    while size < nbytes:
        size *= 2
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            max_size = int(f.read())
    except (OSError, ValueError):
        max_size = 1 << 20
    if size > max_size and os.geteuid() != 0:
        return 0
    return size


def run_program(code: str, code_obj: Any, namespace: dict[str, Any]) -> int:
    """Execute a compiled program as ``__main__``; returns the exit status. The exception type
    of a failure goes to fd 3, first, in case reporting it fails for lack of memory."""
    rc = 0
    try:
        exec(code_obj, namespace)
        if "threading" in sys.modules:  # like interpreter exit: wait for non-daemon threads
            sys.modules["threading"]._shutdown()
    except SystemExit as e:
        if e.code is not None and e.code != 0:
            rc = (e.code & 0xFF or 1) if isinstance(e.code, int) else 1
            _report_error_type("SystemExit")
            if not isinstance(e.code, int):
                try:
                    print(e.code, file=sys.stderr)
                except BaseException:  # noqa: BLE001 - a broken stderr is the program's doing
                    pass
    except BaseException as e:  # noqa: BLE001 - the program's own failure is the result
        rc = 1
        _report_error_type(type(e).__name__)
        try:
            linecache.cache[PROGRAM_NAME] = (len(code), None, code.splitlines(True), PROGRAM_NAME)
            tb = e.__traceback__.tb_next if e.__traceback__ is not None else None  # skip exec()
            traceback.print_exception(type(e), e, tb)
        except BaseException:  # noqa: BLE001
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - closed or broken streams are the program's doing
            pass
    return rc


def _report_error_type(name: str) -> None:
    try:
        os.write(3, name.encode())
    except OSError:
        pass


def _remove_entry(entry: os.DirEntry) -> None:
    """Remove a file, link or folder a run left behind (gone already is fine)."""
    if entry.is_dir(follow_symlinks=False):
        _rmtree(entry.path)
    else:
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            pass


def _rmtree(path: str) -> None:
    import shutil  # only when a run left files behind; not kept in the template

    shutil.rmtree(path, onerror=_force_remove)


def _force_remove(func: Any, path: str, _exc: Any) -> None:
    """rmtree error hook: a run may leave folders without permissions; grant and retry."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            _rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        pass


# --- the templates ---------------------------------------------------------------------------

def _import_all(names: list[str]) -> list[str]:
    errors = []
    for name in names:
        try:
            __import__(name)
        except Exception as e:  # noqa: BLE001 - reported to the client, which raises
            errors.append(f"{name}: {type(e).__name__}: {e}")
    return errors


# Run once in the heavy template (trusted code): sympy imports many submodules and builds
# caches on first use, which every run would otherwise redo (and copy) from scratch.
_WARM_UP = {
    "sympy": """
import sympy as sp
x, y = sp.symbols("x y")
sp.solve(sp.Eq(3 * x + 1, 22), x)
sp.solve([x + y - 10, x - y - 2], [x, y])
sp.nsimplify(sp.Rational(1, 3) + sp.Rational(1, 6))
sp.simplify((x**2 - 1) / (x - 1))
sp.factor(x**2 - 5 * x + 6)
sp.expand((x + 1) ** 3)
sp.factorint(360)
sp.Integer(10).is_prime
sp.N(sp.sqrt(2) * sp.pi, 15)
sp.Matrix([[1, 2], [3, 4]]).det()
sp.summation(x, (x, 1, 10))
sp.Poly(x**2 + 1, x).degree()
sp.latex(x**2 / 2)
str(sp.sqrt(8)), repr(sp.Rational(3, 4)), float(sp.Rational(1, 3))
""",
}


def _warm_up_modules(names: list[str]) -> None:
    for name in names:
        code = _WARM_UP.get(name)
        if code is not None:
            try:
                exec(code, {"__name__": "__warmup__"})
            except Exception:  # noqa: BLE001 - a faster first run is all this buys
                pass


def _freeze() -> None:
    # Objects the template holds are never collected in a run child: freezing them keeps the
    # child's garbage collector from touching (and so copying) every page of the template.
    # Then hand the allocator's free pages back: fork copies the page table of every resident
    # page, so a smaller template forks (and its children exit) faster.
    gc.collect()
    gc.freeze()
    _linux.malloc_trim()


def _read_paths(cfg: dict[str, Any], private_proc: bool) -> list[str]:
    """Landlock read-only allowlist: system directories and the interpreter's own paths, but
    not the project checkout (data, runs, answers) unless a configured module lives there."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if pkg_parent in cfg["site_dirs"] or any(_is_under(pkg_parent, p) for p in
                                             (sys.prefix, sys.base_prefix, *cfg["prefixes"])):
        pkg_parent = ""  # sandbox is installed, not a checkout: nothing to leave out
    paths = ["/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc", "/dev", "/sys"]
    if private_proc:
        paths.append("/proc")
    paths += [p for p in cfg["keep_paths"] if p != pkg_parent]
    for name in cfg["modules"]:
        mod = sys.modules.get(name)
        f = getattr(mod, "__file__", None)
        if f:
            paths.append(os.path.dirname(os.path.abspath(f)))
    return sorted(set(paths))


def _keep_paths(prefixes: list[str]) -> list[str]:
    """Directories the interpreter loads from: they stay visible (and readable) in the run."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *prefixes}
    paths |= {p for p in sys.path if p and os.path.isdir(p)}
    out = {q for p in paths for q in (os.path.abspath(p), os.path.realpath(p))}
    return sorted(out - {"/"})


def _count_user_tasks(uid: int) -> int:
    n = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = {k: v for k, _, v in (line.partition(":") for line in f)}
            if int(fields["Uid"].split()[0]) == uid:
                n += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return n


class Init(Runner):
    """PID 1 of the worker's namespace: sets up isolation, runs light programs, relays heavy ones."""

    def __init__(self, cfg: dict[str, Any], ns: dict[str, Any], launcher_pid: int) -> None:
        # The client's pipes (0, 1) and the caller's stderr (2) move up: 0-4 are the runs'.
        self.ctrl_in, self.ctrl_out = _high_fd(os.dup(0)), _high_fd(os.dup(1))
        _FDS.update(ctrl_out=self.ctrl_out, diag=_high_fd(os.dup(2)))
        null = os.open(os.devnull, os.O_RDWR)
        for fd in range(5):  # held until the runs' layout replaces them (open_pipes)
            if fd != null:
                os.dup2(null, fd)
        if null > 4:
            os.close(null)
        cfg["keep_paths"] = _keep_paths(cfg["prefixes"])
        report: dict[str, Any] = {k: ns[k] for k in ("userns", "netns", "mountns", "pidns", "ipcns")}
        report.update(notes=list(ns["errors"]), private_tmp=False, readonly_root=False, private_proc=False,
                      hidden_dirs=[])
        _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
        try:  # inherited by every run: under memory pressure the kernel kills runs, not the trainer
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError as e:
            report["notes"].append(f"oom_score_adj: {e}")
        _linux.prctl(_linux.PR_SET_DUMPABLE, 0)  # no same-uid ptrace or /proc/<pid>/mem of templates
        if not ns["pidns"]:
            _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        heavy_names = [m for m in cfg["modules"] if m in cfg["heavy_modules"]]
        self.heavy_modules = heavy_names
        self.heavy_roots = sorted({m.split(".")[0] for m in heavy_names})
        report["import_errors"] = _import_all([m for m in cfg["modules"] if m not in heavy_names])
        if ns["mountns"]:
            try:
                setup_mounts(cfg["scratch_mb"], cfg["keep_paths"], report)
                cfg["kept_in_tmp"] = report.get("kept_in_tmp", [])
                sys.path_importer_cache.clear()  # its folder listings predate the mounts
            except OSError as e:
                report["notes"].append(f"mount set-up failed: {e}")
        if ns["pidns"] and ns["mountns"]:
            try:
                _linux.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                report["private_proc"] = True
            except OSError as e:
                report["notes"].append(f"could not mount a private /proc: {e}")
        if report["private_tmp"]:
            scratch_root = "/tmp"
        else:
            # (not tempfile.mkdtemp: importing tempfile imports random, whose at-fork reseed
            # would then run in every child)
            scratch_root = f"/tmp/mathforge-sandbox-{os.getpid()}-{os.urandom(6).hex()}"
            os.mkdir(scratch_root, 0o711)
        self.own_scratch = None if report["private_tmp"] else scratch_root

        uid = None
        if os.geteuid() == 0 and not ns["userns"] and cfg["drop_uid"]:
            uid = RUN_UID_BASE + launcher_pid
            probe = self._probe_uid(uid)
            if probe == 1:
                report["notes"].append("setuid to an unprivileged uid failed; runs keep this uid")
                uid = None
            elif probe == 2:
                report["notes"].append("the standard library is not readable by the run uid: "
                                       "only pre-imported modules can be imported")
        if uid is not None:
            nproc = cfg["max_processes"]
        elif ns["userns"]:
            nproc = cfg["max_processes"] + 2  # counted per user namespace: init and heavy too
        else:
            nproc = _count_user_tasks(os.getuid()) + cfg["max_processes"]
            report["notes"].append("RLIMIT_NPROC counts every process of this user: approximate")
        scratch = make_scratch(scratch_root, uid)
        abi = _linux.landlock_abi()
        landlock = None
        if abi >= 1:
            try:
                landlock = _linux.LandlockRuleset(
                    abi, _read_paths(cfg, report["private_proc"]), [scratch], ["/dev/null"])
            except OSError as e:
                report["notes"].append(f"Landlock unavailable: {e}")
        # With a per-worker uid, a PID namespace and its own /proc, Landlock's file rules can be
        # applied once to the template and inherited; otherwise each run applies them itself,
        # in a domain of its own (Landlock's signal scope then keeps it from the template).
        template_landlock = landlock if uid is not None and report["private_proc"] else None
        super().__init__(cfg, scratch_root, uid, ns["userns"], None if template_landlock else landlock,
                         pdeathsig=not ns["pidns"], ctrl_fd=self.ctrl_in,
                         sweep_all=ns["pidns"] and not report["private_proc"],
                         clear_root=uid is None and landlock is None)
        self.ns = ns

        # What every run inherits from this template.
        if os.geteuid() == 0:
            os.setgroups([])
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["max_file_mb"] << 20,) * 2)
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_NOFILE, (cfg["max_open_files"],) * 2)
        os.environ.clear()
        os.environ.update(HOME=self.scratch, TMPDIR=self.scratch, PATH=RUN_PATH, LANG="C.UTF-8")
        if "tempfile" in sys.modules:  # a pre-imported module may have cached the old TMPDIR
            sys.modules["tempfile"].tempdir = None
        sys.argv = [PROGRAM_NAME]
        self.reopen_children_file()
        _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
        program = _linux.seccomp_program()
        if program is not None:
            try:
                _linux.SeccompFilter(program).install()
            except OSError as e:
                program = None
                report["notes"].append(f"seccomp unavailable: {e}")
        if template_landlock is not None:
            template_landlock.restrict_self()
        report["landlock_applied"] = ("template" if template_landlock else "per-run") if landlock else "no"

        report.update(
            uid_drop=uid is not None, run_uid=uid, capabilities_dropped=uid is not None or ns["userns"],
            seccomp=program is not None, landlock=landlock is not None, landlock_abi=abi,
            landlock_net=bool(landlock and landlock.net),
            landlock_signal_scope=bool(landlock and landlock.scoped and not template_landlock),
            nproc_limit=nproc, nproc_per_worker=uid is not None or ns["userns"],
            network="netns" if ns["netns"] else ("seccomp" if program is not None else "none"),
            scratch=scratch_root, heavy_modules=heavy_names,
            mode="root-namespaces" if ns["netns"] and not ns["userns"] else
                 "user-namespace" if ns["userns"] else "no-namespaces",
        )
        self.report = report
        self.heavy_pid: int | None = None
        self.heavy_in = self.heavy_out = self.heavy_pidfd = -1
        _freeze()
        self.warm_up()
        _freeze()

    def _probe_uid(self, uid: int) -> int:
        """0: a run can take ``uid``; 1: it cannot; 2: it can but cannot read the stdlib."""
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                code = 2
                os.listdir(os.path.dirname(os.__file__))
                code = 0
            finally:
                os._exit(code)
        _, st = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(st)

    # -- heavy template ---------------------------------------------------------------------

    def start_heavy(self) -> None:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(to_w)
                os.close(from_r)
                for fd in (self.ctrl_in, self.ctrl_out):  # the client's pipes are init's alone
                    os.close(fd)
                self.ctrl_in = _high_fd(to_r)
                self.ctrl_out = _high_fd(from_w)
                self.set_ctrl_fd(self.ctrl_in)
                _linux.prctl(_linux.PR_SET_CHILD_SUBREAPER, 1)
                _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
                self.keep = set()
                self.reopen_children_file()
                self.open_pipes()
                import site  # the .pth files of site-packages, skipped by init (python -S)

                for d in self.cfg["site_dirs"]:
                    site.addsitedir(d)
                errors = _import_all(self.heavy_modules)
                _warm_up_modules(self.heavy_modules)
                _freeze()
                self.limit_memory()
                _protocol.send(self.ctrl_out, {"type": "ready", "import_errors": errors})
                warm = False
                while True:
                    req = _protocol.recv(self.ctrl_in)
                    if req is None:
                        break
                    if not warm:  # here, not before "ready": init is idle while we run
                        self.warm_up()
                        _freeze()
                        warm = True
                    _protocol.send(self.ctrl_out, self.execute(req["code"]))
                self.sweep()
            finally:
                os._exit(0)
        os.close(to_r)
        os.close(from_w)
        self.heavy_pid, self.heavy_in, self.heavy_out = pid, _high_fd(to_w), _high_fd(from_r)
        self.heavy_pidfd = _high_fd(os.pidfd_open(pid))
        self.keep = {pid}

    def on_keep_died(self, pid: int) -> None:
        if pid == self.heavy_pid:
            self._forget_heavy(reap=False)

    def _forget_heavy(self, reap: bool = True) -> None:
        if self.heavy_pid is None:
            return
        if reap:
            try:
                os.kill(self.heavy_pid, signal.SIGKILL)
                os.waitpid(self.heavy_pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for fd in (self.heavy_in, self.heavy_out, self.heavy_pidfd):
            os.close(fd)
        self.keep.discard(self.heavy_pid)
        self.heavy_pid = None

    def run_heavy(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.heavy_pid is None:
            self.start_heavy()
        try:
            _protocol.send(self.heavy_in, req)
        except BrokenPipeError:
            self._forget_heavy()
            return _worker_died("the heavy template had exited")
        poller = select.poll()
        poller.register(self.heavy_out, select.POLLIN)
        poller.register(self.heavy_pidfd, select.POLLIN)
        poller.register(self.ctrl_in, 0)
        while True:
            events = dict(poller.poll())
            if self.ctrl_in in events:
                self._forget_heavy()
                self.sweep()
                os._exit(0)
            if self.heavy_out in events:
                msg = _protocol.recv(self.heavy_out)
                if msg is None:
                    self._forget_heavy()
                    return _worker_died("the heavy template died")
                if msg["type"] == "ready":
                    if msg["import_errors"]:
                        self.report["import_errors"] += msg["import_errors"]
                    continue
                return msg
            if self.heavy_pidfd in events:
                self._forget_heavy()
                return _worker_died("the heavy template died")

    # -- main loop --------------------------------------------------------------------------

    def serve(self) -> None:
        if self.heavy_modules and not self.cfg["lazy_heavy"]:
            self.start_heavy()  # before limit_memory: the heavy template needs more
        self.limit_memory()
        _protocol.send(self.ctrl_out, {"type": "hello", "report": self.report})
        while True:
            req = _protocol.recv(self.ctrl_in)
            if req is None:
                break
            if req["type"] != "run":
                continue
            heavy = req.get("heavy")
            if heavy is None:  # the client normally decides (it knows the heavy modules too)
                heavy = any(name in req["code"] for name in self.heavy_roots)
            if heavy and self.heavy_modules:
                resp = self.run_heavy(req)
            else:
                resp = self.execute(req["code"])
            resp["id"] = req["id"]
            _protocol.send(self.ctrl_out, resp)
        self._forget_heavy()
        self.sweep()
        if self.own_scratch:
            _rmtree(self.own_scratch)


def _worker_died(why: str) -> dict[str, Any]:
    return {"type": "result", "status": SANDBOX_ERROR, "error_type": "WorkerDied", "exit_code": None,
            "elapsed_s": 0.0, "stdout": "", "stderr": f"sandbox: {why}\n"}


def main() -> None:
    cfg = _protocol.recv(0)
    if cfg is None:
        return
    sys.path += [d for d in cfg["site_dirs"] if d not in sys.path]
    launcher_pid = os.getpid()
    try:
        ns = enter_namespaces(cfg["isolation"])
    except OSError as e:
        _protocol.send(1, {"type": "fatal", "error": str(e)})
        return
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            Init(cfg, ns, launcher_pid).serve()
        except BaseException as e:  # noqa: BLE001 - tell the client why, then leave
            with open(_FDS["diag"], "w", closefd=False) as diag:
                traceback.print_exc(file=diag)
            try:
                _protocol.send(_FDS["ctrl_out"], {"type": "fatal", "error": f"{type(e).__name__}: {e}"})
            except OSError:
                pass
            code = 1
        os._exit(code)
    # The launcher only waits: init holds the pipes, so the client sees EOF when init exits.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


if __name__ == "__main__":
    main()
