# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# a busy loop that ignores every catchable signal and arms its own alarm
import signal

for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU, signal.SIGUSR1):
    signal.signal(s, signal.SIG_IGN)
signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
while True:
    pass
