# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# run after state_set.py on every worker: prints LEAK for anything it still finds
import builtins
import math
import os
import sys

leaks = []
if hasattr(builtins, "LEAKED"):
    leaks.append("builtins")
if math.pi != 3.141592653589793:
    leaks.append("math.pi")
if "leaked_module" in sys.modules:
    leaks.append("sys.modules")
if "LEAKED" in os.environ:
    leaks.append("environ")
if "/leaked" in sys.path:
    leaks.append("sys.path")
for path in ("leaked.txt", os.path.join(os.environ["HOME"], "..", "leaked.txt"), "/tmp/leaked.txt",
             "/dev/shm/leaked.txt"):
    if os.path.exists(path):
        leaks.append(path)
if os.listdir("."):
    leaks.append("scratch not empty: " + ",".join(os.listdir(".")))
print("LEAK " + " ".join(leaks) if leaks else "clean")
