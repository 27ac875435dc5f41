# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# a UNIX-domain socket of the parent (think of the Docker or the system bus socket)
import socket

try:
    s = socket.socket(socket.AF_UNIX)
    s.connect("__UNIX__")
    print("CONNECTED")
except OSError as e:
    print("refused", e.errno)
