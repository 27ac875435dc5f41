# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# a symlink planted in the scratch folder pointing outside, written through; chdir('/') then a
# relative write; a chmod 000 folder left behind to break the clean-up
import os

os.symlink("__TARGET__/write_symlink_escape.txt", "link")
for action in (lambda: open("link", "w").write("harm"),
               lambda: (os.chdir("/"), open("__TARGET__"[1:] + "/write_symlink_escape_rel.txt", "w").write("harm"))):
    try:
        action()
        print("WROTE")
    except OSError as e:
        print("refused", e.errno)
os.chdir(os.environ["HOME"])
os.makedirs("locked/inner")
open("locked/inner/f", "w").write("x")
os.chmod("locked/inner", 0)
os.chmod("locked", 0)
print("left a locked folder")
