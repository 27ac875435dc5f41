"""AST stripping of PoT programs (stages.dpo_lib.strip): what goes, what stays, and that the
stripped program prints the same last line (run here with plain exec, no sandbox)."""

from __future__ import annotations

import ast
import contextlib
import io
import textwrap

import pytest

from stages.dpo_lib.strip import FEATURES, strip_program


def _run(program: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(program, "<program>", "exec"), {"__name__": "__main__"})
    lines = [line.strip() for line in out.getvalue().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _strip(program: str, features=FEATURES):
    program = textwrap.dedent(program).lstrip("\n")
    result = strip_program(program, features)
    if result.program is not None:
        ast.parse(result.program)
        assert _run(result.program) == _run(program), result.program
    return program, result


def test_teacher_style_becomes_the_plain_program():
    _, r = _strip("""
        money = 23
        earned = 30
        # add earned to money
        money = money + earned
        print('money:', money)
        # print the final answer
        answer = money
        print(answer)
    """)
    assert r.program == "money = 23\nearned = 30\nmoney = money + earned\nprint(money)\n"
    assert r.removed == {"comments": 2, "prints": 1, "aliases": 1}


def test_intermediate_prints_go_and_the_answer_print_stays():
    _, r = _strip("""
        a = 4
        b = a * 3
        print("b is", b)
        print(f"so far {a + b}")
        c = b - 1
        print(c)
    """)
    assert r.program == "a = 4\nb = a * 3\nc = b - 1\nprint(c)\n"
    assert r.removed == {"prints": 2}


def test_dead_assignments_go_until_nothing_changes():
    _, r = _strip("""
        x = 5
        unused = x * 2
        also_unused = unused + 1
        y = x + 1
        print(y)
    """)
    assert r.program == "x = 5\ny = x + 1\nprint(y)\n"
    assert r.removed == {"dead_assignments": 2}


def test_an_assignment_read_only_by_an_intermediate_print_goes_with_it():
    _, r = _strip("""
        total = 7 * 3
        check = total % 2
        print("parity", check)
        print(total)
    """)
    assert r.program == "total = 7 * 3\nprint(total)\n"


def test_a_rebound_name_is_read_before_it_is_rebound():
    _, r = _strip("""
        x = 2
        y = x + 1
        x = 10
        print(y)
    """)
    assert r.program == "x = 2\ny = x + 1\nprint(y)\n"  # the second x is dead, the first is read


def test_assignments_with_side_effects_stay():
    _, r = _strip("""
        def noisy():
            return 3
        log = noisy()  # a call may print or change state
        result = 6
        print(result)
    """)
    assert r.program == "def noisy():\n    return 3\nlog = noisy()\nresult = 6\nprint(result)\n"


def test_docstrings_and_string_statements_go():
    _, r = _strip('''
        """Solve the problem."""
        def double(x):
            """Twice x."""
            return 2 * x
        "a string used as a comment"
        print(double(21))
    ''')
    assert r.program == "def double(x):\n    return 2 * x\nprint(double(21))\n"
    assert r.removed == {"docstrings": 3}


def test_a_hash_inside_a_string_is_not_a_comment():
    _, r = _strip("""
        label = "# of apples"  # a real comment
        n = 3
        print(label, n)
    """)
    assert r.program == 'label = "# of apples"\nn = 3\nprint(label, n)\n'
    assert r.removed == {"comments": 1}


def test_a_final_print_followed_by_other_statements():
    _, r = _strip("""
        x = 5
        print("x", x)
        print(x * 2)
        y = x + 1
        assert y == 6
    """)
    assert r.program == "x = 5\nprint(x * 2)\ny = x + 1\nassert y == 6\n"


def test_a_loop_that_prints_is_kept_whole():
    _, r = _strip("""
        # count up
        for i in range(3):
            print(i)
    """)
    assert r.program == "for i in range(3):\n    print(i)\n"


def test_prints_inside_earlier_blocks_go_and_an_empty_block_gets_pass():
    _, r = _strip("""
        total = 0
        for i in range(4):
            print("adding", i)
            total += i
        if total > 100:
            print("big")
        print(total)
    """)
    assert r.program == "total = 0\nfor i in range(4):\n    total += i\nif total > 100:\n    pass\nprint(total)\n"


def test_the_answer_inside_a_main_block_keeps_its_last_print():
    _, r = _strip("""
        if __name__ == "__main__":
            t = 4
            print("t", t)
            print(t * 2)
    """)
    assert r.program == "if __name__ == '__main__':\n    t = 4\n    print(t * 2)\n"


def test_the_answer_printed_by_a_function_keeps_that_print():
    _, r = _strip("""
        def solve():
            a = 3
            print("a", a)
            print(a + 4)
        solve()
    """)
    assert "print(a + 4)" in r.program and "print('a', a)" not in r.program


def test_multiple_statements_on_one_line():
    _, r = _strip("a = 1; print(a); b = a + 1; print(b)\n")
    assert r.program == "a = 1\nb = a + 1\nprint(b)\n"


def test_an_alias_is_kept_when_its_source_is_rebound_before_the_read():
    _, r = _strip("""
        a = 3
        b = a
        a = 10
        print(b + a)
    """)
    assert r.program is None and r.reason == "unchanged"


def test_features_can_be_turned_off():
    program = "x = 5  # five\nprint('x', x)\nprint(x)\n"
    assert strip_program(program, ("comments",)).program == "x = 5\nprint('x', x)\nprint(x)\n"
    assert strip_program(program, ("prints",)).program == "x = 5  # five\nprint(x)\n"
    teacher = "# the givens\na = 2\nb = 3\n# the total\ntotal = a * b\nprint('total:', total)\nanswer = total\n" \
              "print(answer)\n# We multiply.\n"
    assert strip_program(teacher, ("prints", "aliases")).program == \
        "# the givens\na = 2\nb = 3\n# the total\ntotal = a * b\nprint(total)\n# We multiply.\n"
    with pytest.raises(ValueError, match="unknown strip feature"):
        strip_program(program, ("colors",))


def test_the_answer_print_keeps_its_label():
    # the teacher's labelled answer (pot_style's `label`) is the answer's print, not a needless one: the
    # strip leaves its label and collapses the alias into it
    teacher = "a = 2\nb = 3\n# the total\ntotal = a * b\nprint('total:', total)\n# print the final answer\n" \
              "answer = total\nprint('Answer:', answer)\n"
    r = strip_program(teacher)
    assert r.program == "a = 2\nb = 3\ntotal = a * b\nprint('Answer:', total)\n"
    assert r.removed == {"comments": 2, "prints": 1, "aliases": 1}


@pytest.mark.parametrize(("program", "reason"), [
    ("x = (1\n", "unparseable"),
    ("x = 1\ny = x + 1\n", "no_answer_print"),
    ("x = 5\nprint(x)\n", "unchanged"),
])
def test_nothing_to_strip_says_why(program, reason):
    r = strip_program(program)
    assert r.program is None and r.reason == reason


def test_dynamic_namespaces_keep_their_assignments():
    _, r = _strip("""
        x = 5
        y = 6
        print(eval("x + y"))
    """)
    assert r.program is None and r.reason == "unchanged"


def test_non_ascii_source_keeps_its_text():
    _, r = _strip('price = "5 €"  # euros\nprint("cost", price)\nprint(price)\n')
    assert r.program == 'price = "5 €"\nprint(price)\n'


def test_a_decorated_function_keeps_its_decorator():
    _, r = _strip("""
        import functools
        @functools.lru_cache(maxsize=None)
        def f(n):
            # recursion
            return n if n < 2 else f(n - 1) + f(n - 2)
        print(f(10))
    """)
    assert "@functools.lru_cache(maxsize=None)" in r.program and "# recursion" not in r.program
