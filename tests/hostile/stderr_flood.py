# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# an endless stderr flood, without newlines
import os

while True:
    os.write(2, b"y" * 65536)
