# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# the parent's environment: os.environ, /proc/self/environ, and every /proc/<pid>/environ and
# cmdline that can be read (the parent, the worker, PID 1, anything)
import os

print(dict(os.environ))
print(os.environ.get("__SECRET_NAME__"))
try:
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
except OSError as e:
    print("/proc refused", e.errno)
    pids = []
for pid in ["self", "1", str(os.getppid())] + pids:
    for name in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                print(pid, name, f.read().replace(b"\0", b" ")[:4000])
        except OSError as e:
            print(pid, name, "refused", e.errno)
