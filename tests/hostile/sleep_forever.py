# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# sleeping uses no CPU: only the wall-clock deadline ends it
import time

time.sleep(10_000)
