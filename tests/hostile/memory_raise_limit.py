# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# raise the address-space limit first, then allocate
import resource

try:
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print("RAISED")
except (ValueError, OSError) as e:
    print("refused", e)
x = bytearray(8 << 30)
