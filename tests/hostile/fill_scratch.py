# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# fill the scratch space: one huge file, then many files
try:
    with open("big", "wb") as f:
        for _ in range(1024):  # 1 GiB, a MiB at a time
            f.write(b"0" * (1 << 20))
except OSError as e:
    print("big refused", e.errno)
try:
    for i in range(10_000):
        with open(f"f{i}", "wb") as f:
            f.write(b"0" * (1 << 20))
except OSError as e:
    print("many refused at", i, e.errno)
