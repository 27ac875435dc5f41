# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# a daemon (double fork, setsid, closed descriptors) that acts after the run has returned
import os
import time

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in range(3):
            os.close(fd)
        time.sleep(1.0)
        for path in ("__TARGET__/daemon.txt", "daemon_was_here.txt"):
            try:
                open(path, "w").write("harm")
            except OSError:
                pass
        time.sleep(1000)
    os._exit(0)
print("parent done")
