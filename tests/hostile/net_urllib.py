# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# an HTTP request through urllib
import urllib.error
import urllib.request

try:
    urllib.request.urlopen("http://127.0.0.1:__PORT__/harm", timeout=0.5)
    print("CONNECTED")
except urllib.error.URLError as e:  # refused before any connection: the reason is an OSError
    print("refused" if isinstance(e.reason, OSError) else "CONNECTED", e.reason)
except Exception as e:  # the listener closed an established connection
    print("CONNECTED", type(e).__name__)
