# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# a shell through os.system and os.popen
import os

print(os.system("touch __TARGET__/write_os_system.txt"))
print(os.popen("echo harm > __TARGET__/write_os_system_popen.txt; echo $?").read())
