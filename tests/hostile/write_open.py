# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# builtins.open outside the scratch folder, and into the shared /tmp, /var/tmp, /dev/shm
import os

for path in ["__TARGET__/write_open.txt", "/var/tmp/mf_write_open.txt", "/dev/shm/mf_write_open.txt",
             "/tmp/mf_write_open.txt", os.path.expanduser("~/../mf_write_open.txt")]:
    try:
        with open(path, "w") as f:
            f.write("harm")
        print("WROTE", path)
    except OSError as e:
        print("refused", path, e.errno)
