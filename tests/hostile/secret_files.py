# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# files outside the interpreter's own folders: a world-readable secret next to the project, the
# caller's home, and the shadow password file
import glob
import os

for path in ["__TARGET__/secret.txt", "/etc/shadow"] + glob.glob("/root/.*") + glob.glob("/home/*/.*"):
    try:
        with open(path) as f:
            print(path, f.read()[:200])
    except OSError as e:
        print(path, "refused", e.errno)
