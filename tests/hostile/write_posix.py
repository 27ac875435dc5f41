# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# the posix module directly (no os wrapper, no builtins.open)
import posix

try:
    fd = posix.open("__TARGET__/write_posix.txt", posix.O_WRONLY | posix.O_CREAT, 0o666)
    posix.write(fd, b"harm")
    print("WROTE")
except OSError as e:
    print("refused", e.errno)
