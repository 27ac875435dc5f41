"""Thin ctypes wrappers around the Linux isolation primitives the sandbox uses.

Python 3.11's ``os`` module has no ``unshare``, ``mount``, ``prctl``, seccomp or Landlock, and
pulling in a compiled extension for a dozen system calls would make the sandbox harder to install
than the rest of the project, so the calls are made through ``ctypes`` on the C library. Only
x86_64 and aarch64 syscall numbers are known; on other architectures the seccomp filter is
reported unavailable and everything else still works.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

MACHINE = os.uname().machine

# clone / unshare flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEW_ANY = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
                 | CLONE_NEWPID | CLONE_NEWNET)

# mount flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
_MOUNT_OPTION_FLAGS = {
    "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME,
}

# prctl
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2

_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "socket": 41, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272,
        "setns": 308, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248,
        "request_key": 249, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
        "finit_module": 313, "delete_module": 176, "open_by_handle_at": 304,
        "name_to_handle_at": 303, "move_mount": 429, "open_tree": 428, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "pidfd_getfd": 438,
        "acct": 163, "swapon": 167, "swapoff": 168, "reboot": 169, "quotactl": 179,
        "lookup_dcookie": 212, "vhangup": 153, "clone": 56, "clone3": 435, "capset": 126,
    },
    "aarch64": {
        "socket": 198, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "bpf": 280,
        "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219, "add_key": 217,
        "request_key": 218, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105,
        "finit_module": 273, "delete_module": 106, "open_by_handle_at": 265,
        "name_to_handle_at": 264, "move_mount": 429, "open_tree": 428, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "pidfd_getfd": 438,
        "acct": 89, "swapon": 224, "swapoff": 225, "reboot": 142, "quotactl": 60,
        "lookup_dcookie": 18, "vhangup": 58, "clone": 220, "clone3": 435, "capset": 91,
    },
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
SYS = _SYSCALLS.get(MACHINE, {})
NR_LANDLOCK_CREATE_RULESET, NR_LANDLOCK_ADD_RULE, NR_LANDLOCK_RESTRICT_SELF = 444, 445, 446

# Calls refused (EPERM) to model code: sockets (no network even where there is no network
# namespace), debugging other processes, and kernel interfaces a math program never needs but an
# escape would (mounts, namespaces, io_uring, bpf, keys, modules, file handles).
SECCOMP_DENIED = (
    "socket", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2",
    "pivot_root", "chroot", "unshare", "setns", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key",
    "request_key", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "open_by_handle_at", "name_to_handle_at", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "pidfd_getfd", "acct", "swapon",
    "swapoff", "reboot", "quotactl", "lookup_dcookie", "vhangup",
)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def _enc(s: str | None) -> bytes | None:
    return s.encode() if s is not None else None


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)), f"mount {target}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def malloc_trim() -> None:
    """Return the C allocator's free memory to the kernel (glibc; a no-op elsewhere)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def drop_capabilities() -> None:
    """Empty the effective, permitted and inheritable capability sets of the calling thread."""
    header = struct.pack("=Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = bytes(24)  # two zeroed __user_cap_data_struct
    _check(_libc.syscall(SYS["capset"], header, data), "capset")


def mount_options(opts: str) -> int:
    """MS_* flags for the per-mount options field of /proc/self/mountinfo."""
    flags = 0
    for opt in opts.split(","):
        flags |= _MOUNT_OPTION_FLAGS.get(opt, 0)
        if opt == "ro":
            flags |= MS_RDONLY
    return flags


def _unescape(path: str) -> str:
    """Undo the octal escapes (``\\040`` for a space) of /proc/self/mountinfo."""
    if "\\" not in path:
        return path
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and i + 3 < len(path) and path[i + 1:i + 4].isdigit():
            out.append(chr(int(path[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, per-mount options, filesystem type) for every mount of this namespace."""
    rows = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            rows.append((_unescape(fields[4]), fields[5], fields[sep + 1]))
    return rows


# --- seccomp ---------------------------------------------------------------------------------

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def seccomp_program() -> bytes | None:
    """The BPF filter (raw ``sock_filter`` array) installed in every run, or None when the
    architecture is not one whose syscall numbers are known here."""
    arch = _AUDIT_ARCH.get(MACHINE)
    if arch is None:
        return None
    eperm = _RET_ERRNO | errno.EPERM
    prog = [
        _insn(_BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _insn(_BPF_JEQ_K, 1, 0, arch),
        _insn(_BPF_RET_K, 0, 0, _RET_KILL_PROCESS),  # a foreign ABI (i386 on x86_64)
        _insn(_BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if MACHINE == "x86_64":  # the x32 ABI sets bit 30 of the syscall number
        prog += [_insn(_BPF_JGE_K, 0, 1, 0x40000000), _insn(_BPF_RET_K, 0, 0, eperm)]
    for name in SECCOMP_DENIED:
        prog += [_insn(_BPF_JEQ_K, 0, 1, SYS[name]), _insn(_BPF_RET_K, 0, 0, eperm)]
    # clone3 passes its flags in memory that a filter cannot read: answer ENOSYS so that libc
    # falls back to clone, whose flags are checked below for new namespaces.
    prog += [_insn(_BPF_JEQ_K, 0, 1, SYS["clone3"]), _insn(_BPF_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    prog += [
        _insn(_BPF_JEQ_K, 0, 3, SYS["clone"]),
        _insn(_BPF_LD_W_ABS, 0, 0, 16),  # low word of args[0]: the flags
        _insn(_BPF_JSET_K, 0, 1, CLONE_NEW_ANY),
        _insn(_BPF_RET_K, 0, 0, eperm),
        _insn(_BPF_RET_K, 0, 0, _RET_ALLOW),
    ]
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SeccompFilter:
    """A filter built once in the template and installed by each run child (one prctl)."""

    def __init__(self, program: bytes) -> None:
        self._buf = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // 8, ctypes.addressof(self._buf))

    def install(self) -> None:
        """Apply to the calling process (requires no_new_privs, set by the caller)."""
        _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self._fprog), 0, 0),
               "seccomp")


# --- Landlock --------------------------------------------------------------------------------

LL_EXECUTE = 1 << 0
LL_WRITE_FILE = 1 << 1
LL_READ_FILE = 1 << 2
LL_READ_DIR = 1 << 3
LL_REFER = 1 << 13
LL_TRUNCATE = 1 << 14
LL_FS_V1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
LL_NET_ALL = 1 | 2  # BIND_TCP | CONNECT_TCP
LL_SCOPE_ALL = 1 | 2  # ABSTRACT_UNIX_SOCKET | SIGNAL
_LL_RULE_PATH_BENEATH = 1


def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers (0 when Landlock is absent or disabled)."""
    ret = _libc.syscall(NR_LANDLOCK_CREATE_RULESET, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    return max(int(ret), 0)


class LandlockRuleset:
    """A ruleset built once in the template (read-only system paths, writable scratch) and
    applied by each run child with one ``landlock_restrict_self``."""

    def __init__(self, abi: int, read_paths: list[str], write_paths: list[str], rw_files: list[str]) -> None:
        fs = LL_FS_V1 | (LL_REFER if abi >= 2 else 0) | (LL_TRUNCATE if abi >= 3 else 0)
        net = LL_NET_ALL if abi >= 4 else 0
        scoped = LL_SCOPE_ALL if abi >= 6 else 0
        attr = struct.pack("=QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
        self.fd = _check(_libc.syscall(NR_LANDLOCK_CREATE_RULESET, attr, len(attr), 0), "landlock_create_ruleset")
        os.set_inheritable(self.fd, False)
        self.scoped = bool(scoped)
        self.net = bool(net)
        file_rights = LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | (LL_TRUNCATE if abi >= 3 else 0)
        for path in read_paths:
            self._add(path, LL_EXECUTE | LL_READ_FILE | LL_READ_DIR, file_rights)
        for path in write_paths:
            self._add(path, fs, file_rights)
        for path in rw_files:
            self._add(path, LL_READ_FILE | LL_WRITE_FILE | (LL_TRUNCATE if abi >= 3 else 0), file_rights)

    def _add(self, path: str, rights: int, file_rights: int) -> None:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # a path that does not exist needs no rule
        try:
            if not os.path.isdir(path):
                rights &= file_rights
            rule = struct.pack("=Qi", rights, pfd)
            _check(_libc.syscall(NR_LANDLOCK_ADD_RULE, self.fd, _LL_RULE_PATH_BENEATH, rule, 0),
                   f"landlock_add_rule {path}")
        finally:
            os.close(pfd)

    def restrict_self(self, fd: int | None = None) -> None:
        """Enforce on the calling thread (requires no_new_privs); ``fd`` if it was moved."""
        _check(_libc.syscall(NR_LANDLOCK_RESTRICT_SELF, self.fd if fd is None else fd, 0), "landlock_restrict_self")
