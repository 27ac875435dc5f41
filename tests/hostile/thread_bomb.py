# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# a thread bomb
import threading
import time

n = 0
while True:
    threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()
    n += 1
