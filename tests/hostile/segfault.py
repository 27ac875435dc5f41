# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# a segmentation fault
import ctypes

print("before")
ctypes.string_at(0)
