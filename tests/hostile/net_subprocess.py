# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# bash's /dev/tcp and a fresh interpreter's socket, from child processes
import subprocess
import sys

for argv in (["bash", "-c", "echo harm > /dev/tcp/127.0.0.1/__PORT__ && echo CONNECTED"],
             [sys.executable, "-c",
              "import socket; socket.create_connection(('127.0.0.1', __PORT__), 0.5); print('CONNECTED')"]):
    r = subprocess.run(argv, capture_output=True, text=True)
    print(r.returncode, r.stdout, r.stderr[-300:])
