# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# new namespaces, mounts, setuid(0), ptrace of the template, /proc/<pid>/mem of the template
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
for what, call in (("unshare(user)", lambda: libc.unshare(0x10000000)),
                   ("unshare(net|mount)", lambda: libc.unshare(0x40000000 | 0x00020000)),
                   ("mount", lambda: libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)),
                   ("ptrace(attach)", lambda: libc.ptrace(16, os.getppid(), None, None))):
    ret = call()
    print("ESCAPED" if ret == 0 else "refused", what, ret, ctypes.get_errno())
for what, action in (("setuid(0)", lambda: os.setuid(0)),
                     ("parent mem", lambda: open(f"/proc/{os.getppid()}/mem", "wb"))):
    try:
        action()
        print("ESCAPED", what)
    except OSError as e:
        print("refused", what, e.errno)
