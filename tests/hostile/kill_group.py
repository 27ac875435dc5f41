# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# killing its own process group (ends the run, must not end the pool)
import os
import signal

print("before")
os.killpg(0, signal.SIGKILL)
