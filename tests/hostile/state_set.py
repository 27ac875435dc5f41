# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# state left for the next run: interpreter globals, module attributes, the environment, files
# in every place a run might write
import builtins
import math
import os
import sys

builtins.LEAKED = 1
math.pi = 3
sys.modules["leaked_module"] = sys
os.environ["LEAKED"] = "1"
sys.path.insert(0, "/leaked")
for path in ("leaked.txt", os.path.join(os.environ["HOME"], "..", "leaked.txt"), "/tmp/leaked.txt",
             "/dev/shm/leaked.txt"):
    try:
        open(path, "w").write("x")
    except OSError:
        pass
print("set")
