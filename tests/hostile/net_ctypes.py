# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# socket(2) and connect(2) through ctypes, bypassing the socket module
import ctypes
import socket
import struct

libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
print("socket", fd, ctypes.get_errno())
if fd >= 0:
    addr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", __PORT__) + socket.inet_aton("127.0.0.1") + bytes(8)
    print("CONNECTED" if libc.connect(fd, addr, len(addr)) == 0 else "refused")
