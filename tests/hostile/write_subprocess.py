# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# subprocess, including a fresh interpreter that has none of the parent's Python state
import subprocess
import sys

print(subprocess.run(["sh", "-c", "echo harm > __TARGET__/write_subprocess.txt"], capture_output=True))
print(subprocess.run(["cp", "/etc/hostname", "__TARGET__/write_subprocess_cp.txt"], capture_output=True))
print(subprocess.run([sys.executable, "-c", "open('__TARGET__/write_subprocess_py.txt', 'w').write('x')"],
                     capture_output=True))
