# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# a TCP connection to a listener of the parent on 127.0.0.1
import socket

try:
    s = socket.create_connection(("127.0.0.1", __PORT__), timeout=0.5)
    print("CONNECTED")
except OSError as e:
    print("refused", e.errno)
