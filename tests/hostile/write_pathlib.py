# ruff: noqa  (a corpus file: placeholders such as __PORT__ are filled in by the test)
# pathlib, including a directory and a rename out of the scratch folder
import pathlib

p = pathlib.Path("local.txt")
p.write_text("harm")
for action in (lambda: pathlib.Path("__TARGET__/write_pathlib.txt").write_text("harm"),
               lambda: pathlib.Path("__TARGET__/write_pathlib_dir").mkdir(),
               lambda: p.rename("__TARGET__/write_pathlib_renamed.txt"),
               lambda: pathlib.Path("__TARGET__/write_pathlib_link.txt").hardlink_to(p)):
    try:
        action()
        print("DONE")
    except OSError as e:
        print("refused", e.errno)
