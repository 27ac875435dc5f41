# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# one huge allocation, then a growing list
x = []
try:
    x.append(bytearray(1 << 40))
except MemoryError:
    pass
while True:
    x.append(bytearray(10 << 20))
