# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# signals to the parent (the template), to PID 1, and to every process (kill -1)
import os
import signal

for target in (os.getppid(), 1, -1):
    try:
        os.kill(target, signal.SIGKILL)
        print("sent", target)
    except OSError as e:
        print("refused", target, e.errno)
print("alive")
