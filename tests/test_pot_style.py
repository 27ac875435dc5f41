"""PoT style rewrites (stages.common.pot_style) and the synth stage's concise_fraction."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from stages.common.arith import generate_problems
from stages.common.pot_style import add_step_comments, chosen_for_rewrite, inline_single_use


def _run(program: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(program, "<p>", "exec"), {})  # trusted: the arithmetic task's own programs
    return out.getvalue()


def test_inlining_keeps_the_answer_and_shortens_arith_programs():
    problems = generate_problems(200, split="train", seed=5)
    for mode in (True, False):
        rewritten = 0
        for p in problems:
            short = inline_single_use(p["program"], literals_only=mode)
            if short is None:  # every variable is read twice (e.g. a divisibility assert)
                continue
            rewritten += 1
            assert _run(short).strip() == p["answer"], (p["program"], short)
            assert len(short) < len(p["program"])
        assert rewritten > 0.8 * len(problems)


def test_literals_mode_keeps_computed_variables():
    program = "cards = 39\nwon = 16\ncards = cards + won\nmore = 18\nfriend = cards + more\nprint(friend)\n"
    assert inline_single_use(program, literals_only=True) == (
        "cards = 39 + 16\nfriend = cards + 18\nprint(friend)\n")
    assert inline_single_use(program) == "print(39 + 16 + 18)\n"


def test_variables_read_twice_or_rebound_stay():
    twice = "x = 4\ny = x * x\nprint(y)\n"
    assert inline_single_use(twice) == "x = 4\nprint(x * x)\n"
    # inlining a = b into the print would read the rebound b
    assert inline_single_use("b = 2\na = b + 1\nb = b * 10\nprint(a, b)\n") is None
    rebound = "b = 2\nc = b * 3\na = b + 1\nb = 10\nprint(a, b, c)\n"
    # b = 10 goes into the print first; then nothing rebinds b between c, a and their use
    assert inline_single_use(rebound) == "b = 2\nprint(b + 1, 10, b * 3)\n"
    assert _run(inline_single_use(rebound)) == _run(rebound)
    precedence = "a = 2 + 3\nprint(a * 4)\n"
    assert inline_single_use(precedence) == "print((2 + 3) * 4)\n"


def test_control_flow_and_bad_code_are_left_alone():
    assert inline_single_use("for i in range(3):\n    x = i\nprint(x)\n") is None
    assert inline_single_use("def f():\n    return 1\nprint(f())\n") is None
    assert inline_single_use("print(1 +)") is None
    assert inline_single_use("print(3)\n") is None  # nothing to inline


def test_rewrite_draw_is_stable_and_near_the_fraction():
    ids = [f"p{i}" for i in range(4000)]
    picked = [chosen_for_rewrite(i, 0.3, seed=0) for i in ids]
    assert picked == [chosen_for_rewrite(i, 0.3, seed=0) for i in ids]
    assert 0.27 < sum(picked) / len(ids) < 0.33
    assert picked != [chosen_for_rewrite(i, 0.3, seed=1) for i in ids]
    assert not any(chosen_for_rewrite(i, 0.0) for i in ids[:100])
    assert all(chosen_for_rewrite(i, 1.0) for i in ids[:100])


def test_synth_concise_fraction_rewrites_and_verifies(tmp_path):
    from stages.common.data import read_jsonl
    from stages.synth import main

    def run(name: str, **fractions):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(json.dumps({"problems": ["arith:train:200"], "teachers": ["reference"], "decontaminate": [],
                                   "seed": 0, **fractions}))
        out = main(["--config", str(cfg), "--run", name, "--runs_dir", str(tmp_path / "runs")])
        return read_jsonl(out / "verified.jsonl", "verified"), json.loads((out / "metrics.json").read_text())

    plain, _ = run("plain")
    mixed, metrics = run("mixed", concise_fraction=0.5)
    assert len(mixed) == len(plain) == 200  # every rewrite still verifies
    changed = [m for p, m in zip(plain, mixed, strict=True) if p["completion"] != m["completion"]]
    assert metrics["teachers"]["reference"]["rewritten_concise"] == len(changed)
    assert 0.35 < len(changed) / 200 < 0.65
    assert all(chosen_for_rewrite(m["id"], 0.5, 0) for m in changed)
    assert sum(m["n_tokens"] for m in mixed) < 0.9 * sum(p["n_tokens"] for p in plain)

    verbose, vmetrics = run("verbose", verbose_fraction=0.5)
    longer = [v for p, v in zip(plain, verbose, strict=True) if p["completion"] != v["completion"]]
    assert vmetrics["teachers"]["reference"]["rewritten_verbose"] == len(longer)
    assert "rewritten_concise" not in vmetrics["teachers"]["reference"]
    assert 0.35 < len(longer) / 200 < 0.65
    assert all(v["completion"].splitlines()[-2].startswith("# ") for v in longer)  # the explanation, then the fence
    assert sum(v["n_tokens"] for v in verbose) > 1.2 * sum(p["n_tokens"] for p in plain)


def test_comments_go_with_the_statement_they_describe():
    from stages.common.steps import split_solution

    program = generate_problems(1, split="train", seed=3)[0]["program"]
    verbose = add_step_comments(program)
    assert _run(verbose) == _run(program)
    steps = split_solution(f"```python\n{verbose}```")
    plain = split_solution(f"```python\n{program}\n```")
    assert len(steps) == len(plain)
    for step, code in zip(steps, plain, strict=True):
        comment, _, rest = step.partition("\n")
        assert comment.startswith("# ") and rest == code
    assert split_solution("```python\nx = 1  # one\n\n# then\ny = x\n# trailing\n```") == [
        "x = 1  # one", "# then\ny = x\n# trailing"]
    # a string line that starts with '#' belongs to its statement, not to the next one
    assert split_solution("```python\nx = '''a\n# not a comment'''\ny = 1\n```") == [
        "x = '''a\n# not a comment'''", "y = 1"]


def test_explanation_follows_the_program_and_changes_no_output():
    from stages.common.pot_style import EXPLANATIONS, add_explanation

    program = generate_problems(1, split="train", seed=4)[0]["program"]
    verbose = add_explanation(program, "id-1")
    assert verbose.startswith(program.rstrip("\n") + "\n# ") and _run(verbose) == _run(program)
    assert add_explanation(program, "id-1") == verbose  # the template is a function of the key
    used = {add_explanation(program, f"id-{i}").splitlines()[-1] for i in range(30)}
    assert used == {f"# {t}" for t in EXPLANATIONS}
    assert add_explanation("print(1 +)", "x") is None


STYLES = ("plain", "comments", "answer_var", "prints", "inline", "fold", "no_asserts", "comments+answer_var",
          "comments+fold", "fold+no_asserts", "comments+fold+no_asserts", "comments+prints+answer_var",
          "inline+comments+explanation", "label", "comments+answer_var+label", "comments+prints+answer_var+label",
          "comments+fold+no_asserts+label")


def test_every_style_prints_the_same_answer_last_and_is_deterministic():
    from rewards.scoring import printed_answer
    from stages.common.pot_style import apply_style

    problems = generate_problems(120, split="train", seed=6, levels=(1, 2, 3, 4))
    for style in STYLES:
        for p in problems:
            new = apply_style(p["program"], style, p["id"])
            if new is None:  # only inlining may find nothing to inline
                assert style.startswith("inline"), (style, p["program"])
                continue
            assert new == apply_style(p["program"], style, p["id"])
            out = _run(new).strip().splitlines()
            if "label" in style:  # the answer after its label, which the answer reader takes
                assert out[-1] == f"Answer: {p['answer']}" and printed_answer(out[-1]) == p["answer"], (style, new)
            else:
                assert out[-1] == p["answer"], (style, new)
            if "prints" in style and p["level"] > 1:
                assert len(out) > 1  # intermediate values come first, the answer stays last
            if "comments" in style:
                assert "\n# print the final answer\n" in new
            if "fold" in style:  # the answer's computation moves into the print; the givens keep their names
                last = new.splitlines()[-1]
                assert last.startswith("print(") and any(op in last for op in "+-*/"), new
                givens = [line for line in p["program"].splitlines() if line.split(" = ")[-1].isdigit()]
                assert all(line in new.splitlines() for line in givens), new
            checks = [line for line in p["program"].splitlines() if line.startswith("assert ")]
            if "no_asserts" in style:  # the divisibility checks go, nothing else
                without = "+".join(f for f in style.split("+") if f != "no_asserts") or "plain"
                kept = apply_style(p["program"], without, p["id"]).splitlines()
                assert "assert" not in new and len(new.splitlines()) == len(kept) - len(checks), new
            elif not style.startswith("inline"):
                assert all(line in new.splitlines() for line in checks), (style, new)


def test_styles_add_what_they_name():
    from stages.common.pot_style import apply_style

    program = "apples = 23\nbags = 2\nper_bag = 5\nbought = bags * per_bag\napples = apples + bought\nprint(apples)\n"
    assert apply_style(program, "plain") == program
    assert apply_style(program, "answer_var").endswith("answer = apples\nprint(answer)\n")
    assert apply_style(program, "prints") == (
        "apples = 23\nbags = 2\nper_bag = 5\nbought = bags * per_bag\nprint('bought:', bought)\n"
        "apples = apples + bought\nprint('apples:', apples)\nprint(apples)\n")
    assert apply_style(program, "comments") == (
        "apples = 23\nbags = 2\nper_bag = 5\n# bought is bags times per bag\n"
        "bought = bags * per_bag\n# add bought to apples\napples = apples + bought\n"
        "# print the final answer\nprint(apples)\n")
    assert apply_style(program, "fold") == (
        "apples = 23\nbags = 2\nper_bag = 5\nbought = bags * per_bag\nprint(apples + bought)\n")
    assert apply_style(program, "comments+fold").endswith("# print the final answer\nprint(apples + bought)\n")
    # only the answer's own step folds; a given or an alias does not
    assert apply_style("x = 3\nprint(x)\n", "fold") is None
    assert apply_style("x = 3\ny = x\nprint(y)\n", "fold") is None
    assert apply_style("x = 3\ny = x * 2\nz = y + 1\nprint(z)\n", "fold") == "x = 3\ny = x * 2\nprint(y + 1)\n"
    # no_asserts leaves out the checks and nothing else; a program without one is not a failure
    divide = "money = 36\nbanks = 3\nassert money % banks == 0\neach = money // banks\nprint(each)\n"
    assert apply_style(divide, "no_asserts") == "money = 36\nbanks = 3\neach = money // banks\nprint(each)\n"
    assert apply_style(divide, "fold+no_asserts") == "money = 36\nbanks = 3\nprint(money // banks)\n"
    assert apply_style(program, "no_asserts") == program
    assert apply_style(program, "fold+no_asserts") == apply_style(program, "fold")
    # features apply in a fixed order whatever order they are named in
    assert apply_style(program, "answer_var+comments") == apply_style(program, "comments+answer_var")
    full = apply_style(program, "comments+prints+answer_var")
    assert "print('apples:', apples)\n# print the final answer\nanswer = apples\nprint(answer)\n" in full
    # label: the final print prints the answer after "Answer:", whatever computes it
    assert apply_style(program, "label") == program.replace("print(apples)", "print('Answer:', apples)")
    assert apply_style(program, "fold+label").endswith("print('Answer:', apples + bought)\n")
    assert apply_style(program, "answer_var+label").endswith("answer = apples\nprint('Answer:', answer)\n")
    assert apply_style(program, "comments+label").endswith("# print the final answer\nprint('Answer:', apples)\n")
    assert apply_style("x = 1\n", "label") is None and apply_style("print(1, 2)\n", "label") is None
    # no final print, control flow, a name the alias would shadow, bad code: nothing to rewrite
    assert apply_style("x = 1\n", "answer_var") is None
    assert apply_style("for i in range(2):\n    print(i)\n", "comments") is None
    assert apply_style("answer = 3\nprint(answer + 1)\n", "answer_var") is None
    assert apply_style("print(1 +)", "comments") is None


def test_style_mix_parses_checks_and_draws_near_its_shares():
    from stages.common.pot_style import parse_style_mix, pick_style, style_features

    assert style_features("prints+comments") == ("prints", "comments")
    assert style_features("plain") == ()
    mix = parse_style_mix({"plain": 0.5, "comments+answer_var": 0.3, "comments+prints": 0.2})
    assert parse_style_mix("plain=0.5, comments+answer_var=0.3,comments+prints=0.2") == mix
    for bad, says in [({"plain": 0.5}, "sum to 1"), ({"plain": 1.0, "shouty": 0.0}, "unknown style"),
                      ({"plain": 1.5, "comments": -0.5}, r"\[0, 1\]"), ("plain", "style=share"), ({}, "non-empty")]:
        with pytest.raises(ValueError, match=says):
            parse_style_mix(bad)
    ids = [f"p{i}" for i in range(6000)]
    drawn = [pick_style(i, mix, seed=0) for i in ids]
    assert drawn == [pick_style(i, mix, seed=0) for i in ids]
    for style, share in mix:
        assert abs(drawn.count(style) / len(ids) - share) < 0.02
    assert drawn != [pick_style(i, mix, seed=1) for i in ids]


def test_synth_style_mix_rewrites_every_problem_in_its_style_and_verifies(tmp_path):
    from stages.common.config import ConfigError
    from stages.common.data import read_jsonl
    from stages.common.pot import extract_program
    from stages.common.pot_style import apply_style, parse_style_mix, pick_style
    from stages.synth import main

    mix = {"plain": 0.4, "comments": 0.3, "comments+prints+answer_var": 0.3}
    cfg = tmp_path / "mix.yaml"
    cfg.write_text(json.dumps({"problems": ["arith:train:150", "arith:train:50:0:levels=4"],
                               "teachers": ["reference"], "decontaminate": [], "seed": 0, "style_mix": mix}))
    out = main(["--config", str(cfg), "--run", "mix", "--runs_dir", str(tmp_path / "runs")])
    rows = read_jsonl(out / "verified.jsonl", "verified")
    metrics = json.loads((out / "metrics.json").read_text())["teachers"]["reference"]
    assert len(rows) == 200  # every rewrite still prints the gold answer
    parsed = parse_style_mix(mix)
    references = {p["id"]: p["program"] for p in
                  generate_problems(150, "train", seed=0) + generate_problems(50, "train", seed=0, levels=(4,))}
    counts = {style: 0 for style in mix}
    for r in rows:
        style = pick_style(r["id"], parsed, 0)
        counts[style] += 1
        assert extract_program(r["completion"]) == apply_style(references[r["id"]], style, r["id"]).strip("\n")
    assert {f"rewritten_{s}": n for s, n in counts.items()} == {
        k: v for k, v in metrics.items() if k.startswith("rewritten_") and k != "rewritten_unchanged"}
    assert metrics["rewritten_unchanged"] == 0
    cfg.write_text(json.dumps({"problems": ["arith:train:5"], "teachers": ["reference"], "style_mix": mix,
                               "verbose_fraction": 0.5}))
    with pytest.raises(ConfigError, match="style_mix replaces"):
        main(["--config", str(cfg), "--run", "bad", "--runs_dir", str(tmp_path / "runs")])
