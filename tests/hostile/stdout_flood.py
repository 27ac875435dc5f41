# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# an endless stdout flood
import sys

while True:
    sys.stdout.write("x" * 65536)
