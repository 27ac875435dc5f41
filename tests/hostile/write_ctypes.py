# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# libc calls and a raw open(2) through ctypes, bypassing Python's file objects
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
fd = libc.creat(b"__TARGET__/write_ctypes.txt", 0o666)
print("creat", fd, ctypes.get_errno())
SYS_openat = 257 if os.uname().machine == "x86_64" else 56
fd = libc.syscall(SYS_openat, -100, b"__TARGET__/write_ctypes_raw.txt", os.O_WRONLY | os.O_CREAT, 0o666)
print("openat", fd, ctypes.get_errno())
