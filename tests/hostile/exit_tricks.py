# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# an answer printed, then os._exit(0) without a clean interpreter shutdown
import os
import sys

print(41 + 1)
sys.stdout.flush()
os._exit(0)
