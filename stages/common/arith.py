"""The embedded arithmetic word-problem task: the default pipeline's data on two CPU cores.

A seeded generator of multi-step word problems (collections of things that grow and shrink,
pocket money, shopping bills) with gold answers and reference Program-of-Thought programs. The
level of a problem is its number of arithmetic operations. Every answer is an exact
non-negative integer: subtraction never goes below zero and division is always exact.

Train and test never overlap: a problem's split is decided by a hash of its arithmetic (the
expression it computes, numbers included, wording left out), so a test problem's computation
never appears in training under any wording or seed. Within a split each expression appears at
most once, and a problem's id is derived from that expression, so ids are stable across seeds.

GSM8K stays the real benchmark; this task exists so that the tiny default model can show real
learning, stage by stage, in minutes.

    python -m stages.common.arith --split test --n 500 --seed 0 -o data/arith_test.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stages.common.pot import SYSTEM_PROMPT, format_completion
from stages.common.pot_style import apply_style

SPLITS = ("train", "test")
LEVELS = (1, 2, 3, 4)
DEFAULT_LEVELS = (1, 2, 3)  # the SFT data's levels (the usual split); level 4 is the hard split
TEST_PERCENT = 20  # share of the expression space that belongs to the test split
_MAX_TRIES = 200_000  # draws per requested problem before the space is declared exhausted

# name -> pronoun
NAMES = {
    "Ava": "she", "Ben": "he", "Cara": "she", "Dan": "he", "Eli": "he", "Fay": "she",
    "Gus": "he", "Ivy": "she", "Jon": "he", "Kim": "she", "Leo": "he", "Mia": "she",
    "Ned": "he", "Owen": "he", "Pam": "she", "Ray": "he", "Sam": "he", "Tia": "she",
    "Uma": "she", "Zoe": "she",
}


@dataclass(frozen=True)
class Item:
    plural: str
    container: str  # what holds a group of them
    food: bool = False


ITEMS = (
    Item("apples", "bag", True), Item("marbles", "jar"), Item("stickers", "sheet"),
    Item("pencils", "box"), Item("cookies", "tray", True), Item("cards", "pack"),
    Item("eggs", "carton", True), Item("shells", "bucket"), Item("beads", "string"),
    Item("stamps", "album"), Item("coins", "purse"), Item("candies", "bag", True),
    Item("crayons", "box"), Item("buttons", "tin"), Item("plums", "basket", True),
)

# Things bought at a unit price (shopping and pocket money): the same countable items, so that
# a tiny model learns one set of nouns to carry from the question into the program.
GOODS = tuple(item.plural for item in ITEMS)
# One-off purchases: (noun, variable name).
THINGS = ("book", "hat", "kite", "ball", "lamp", "puzzle", "scarf", "game")
CHORES = ("washing the car", "walking a dog", "mowing the lawn", "raking leaves", "babysitting")


@dataclass
class _Draft:
    """A problem being built: its sentences, program lines and the value and expression so far."""

    rng: random.Random
    name: str
    friend: str
    sentences: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    value: int = 0
    expr: str = ""
    var: str = ""
    ops: int = 0
    used: set[str] = field(default_factory=set)

    @property
    def pron(self) -> str:
        return NAMES[self.name]

    def subject(self) -> str:
        """The subject of a follow-up sentence: the name, the pronoun or 'Then <pronoun>'."""
        r = self.rng.random()
        if r < 0.4:
            return self.pron.capitalize()
        if r < 0.7:
            return f"Then {self.pron}"
        return self.name

    def pick(self, options: Sequence[str]) -> str:
        """A random option not used yet in this problem (so variable names stay distinct)."""
        free = [o for o in options if o not in self.used]
        choice = self.rng.choice(free)
        self.used.add(choice)
        return choice

    def apply(self, op: str, operand: str, operand_value: int, operand_expr: str) -> None:
        """Update the running quantity ``self.var`` with one operation."""
        self.lines.append(f"{self.var} = {self.var} {op} {operand}")
        self.value = self.value + operand_value if op == "+" else self.value - operand_value
        self.expr = f"({self.expr}{op}{operand_expr})"
        self.ops += 1


class _Retry(Exception):
    """The drawn numbers do not fit (negative result, no exact division): draw again."""


# ---------------------------------------------------------------------------- collections


def _collection(d: _Draft, level: int) -> str:
    rng = d.rng
    item = rng.choice(ITEMS)
    d.var = item.plural
    box = item.container
    start_product = level >= 1 and rng.random() < 0.3
    final = rng.choice(["now", "now", "share", "pack", "times", "more", "fewer"])
    if final != "now" and level - int(start_product) < 1:
        final = "now"
    steps = level - int(start_product) - int(final != "now")

    if start_product:
        n, each = rng.randint(2, 9), rng.randint(2, 12)
        d.sentences.append(rng.choice([
            f"{d.name} has {n} {box}s of {item.plural} with {each} {item.plural} in each {box}.",
            f"{d.name} has {n} {box}s with {each} {item.plural} in each.",
        ]))
        d.lines += [f"{box}s = {n}", f"per_{box} = {each}", f"{d.var} = {box}s * per_{box}"]
        d.value, d.expr, d.ops = n * each, f"{n}*{each}", 1
        d.used.add(f"{box}s")
    else:
        a = rng.randint(5, 99)
        d.sentences.append(rng.choice([
            f"{d.name} has {a} {item.plural}.",
            f"{d.name} starts with {a} {item.plural}.",
            f"{d.name} owns {a} {item.plural}.",
        ]))
        d.lines.append(f"{d.var} = {a}")
        d.value, d.expr = a, str(a)

    gains = {
        "bought": "buys {n} more {it}", "found": "finds {n} more {it}",
        "won": "wins {n} {it} in a game", "received": "gets {n} {it} from {f}",
    }
    losses = {
        "given": "gives {n} {it} to {f}", "lost": "loses {n} {it}", "sold": "sells {n} {it}",
        **({"eaten": "eats {n} of the {it}"} if item.food else {"used": "uses {n} {it}"}),
    }
    while steps > 0:
        kind = rng.choice(["gain", "gain", "loss", "loss", "group_gain", "group_loss"] if steps >= 2
                          else ["gain", "loss"])
        if kind in ("gain", "loss"):
            table = gains if kind == "gain" else losses
            var = d.pick(list(table))
            if kind == "gain":
                n = rng.randint(2, 40)
            else:
                if d.value < 2:
                    raise _Retry
                n = rng.randint(1, min(d.value, 40))
            text = table[var].format(n=n, it=item.plural, f=d.friend)
            d.sentences.append(f"{d.subject()} {text}.")
            d.lines.append(f"{var} = {n}")
            d.apply("+" if kind == "gain" else "-", var, n, str(n))
            steps -= 1
        elif kind == "group_gain" and f"{box}s" not in d.used:
            n, each = rng.randint(2, 9), rng.randint(2, 12)
            d.used.update({f"{box}s", "bought"})
            d.sentences.append(f"{d.subject()} buys {n} {box}s with {each} {item.plural} in each {box}.")
            d.lines += [f"{box}s = {n}", f"per_{box} = {each}", f"bought = {box}s * per_{box}"]
            d.apply("+", "bought", n * each, f"{n}*{each}")
            d.ops += 1
            steps -= 2
        elif kind == "group_loss" and "friends" not in d.used:
            n = rng.randint(2, 6)
            if d.value // n < 1:
                raise _Retry
            each = rng.randint(1, min(d.value // n, 10))
            d.used.update({"friends", "given"})
            d.sentences.append(f"{d.subject()} gives {n} friends {each} {item.plural} each.")
            d.lines += [f"friends = {n}", f"per_friend = {each}", "given = friends * per_friend"]
            d.apply("-", "given", n * each, f"{n}*{each}")
            d.ops += 1
            steps -= 2

    who = d.name
    if final == "now":
        d.lines.append(f"print({d.var})")
        return rng.choice([
            f"How many {item.plural} does {who} have now?",
            f"How many {item.plural} does {who} have in the end?",
            f"How many {item.plural} does {who} end up with?",
        ])
    if final in ("share", "pack"):
        divisors = [k for k in range(2, 10) if d.value % k == 0 and d.value // k >= 1]
        if final == "share" and "friends" in d.used or not divisors:
            raise _Retry
        k = rng.choice(divisors)
        if final == "share":
            d.sentences.append(f"{d.subject()} shares the {item.plural} equally among {k} friends.")
            d.lines += [f"friends = {k}", f"assert {d.var} % friends == 0", f"each = {d.var} // friends"]
            question, out = f"How many {item.plural} does each friend get?", "each"
        else:
            if f"{box}s" in d.used:
                raise _Retry
            d.sentences.append(f"{d.subject()} packs the {item.plural} into {box}s of {k}.")
            d.lines += [f"per_{box} = {k}", f"assert {d.var} % per_{box} == 0",
                        f"{box}s = {d.var} // per_{box}"]
            question, out = f"How many {box}s does {who} fill?", f"{box}s"
        d.expr, d.value, d.ops = f"({d.expr}//{k})", d.value // k, d.ops + 1
        d.lines.append(f"print({out})")
        return question
    friend_var = f"friend_{item.plural}"  # not the name: "Ray" and "ray" are unrelated tokens
    d.ops += 1
    if final == "times":
        k = rng.randint(2, 5)
        word = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}[k]
        d.sentences.append(f"{d.friend} has {word} as many {item.plural} as {who}.")
        d.lines += [f"times = {k}", f"{friend_var} = {d.var} * times"]
        d.expr, d.value = f"({d.expr}*{k})", d.value * k
    else:
        if final == "fewer" and d.value < 2:
            raise _Retry
        k = rng.randint(1, min(d.value - 1, 30)) if final == "fewer" else rng.randint(1, 30)
        d.sentences.append(f"{d.friend} has {k} {final} {item.plural} than {who}.")
        op = "+" if final == "more" else "-"
        d.lines += [f"{final} = {k}", f"{friend_var} = {d.var} {op} {final}"]
        d.expr, d.value = f"({d.expr}{op}{k})", d.value + k if op == "+" else d.value - k
    d.lines.append(f"print({friend_var})")
    return f"How many {item.plural} does {d.friend} have?"


# ---------------------------------------------------------------------------- pocket money


def _money(d: _Draft, level: int) -> str:
    rng = d.rng
    d.var = "money"
    share = level >= 2 and rng.random() < 0.25
    steps = level - int(share)
    m = rng.randint(20, 99)
    d.sentences.append(rng.choice([f"{d.name} has ${m}.", f"{d.name} has {m} dollars.",
                                   f"{d.name} saved ${m}."]))
    d.lines.append(f"money = {m}")
    d.value, d.expr = m, str(m)
    while steps > 0:
        kind = rng.choice(["thing", "earn", "goods"] if steps >= 2 else ["thing", "earn"])
        if kind == "thing":
            thing = d.pick(THINGS)
            if d.value < 2:
                raise _Retry
            q = rng.randint(1, min(d.value, 50))
            d.sentences.append(f"{d.subject()} {rng.choice(['buys', 'pays for'])} a {thing} for ${q}.")
            d.lines.append(f"{thing} = {q}")
            d.apply("-", thing, q, str(q))
            steps -= 1
        elif kind == "earn":
            if "earned" in d.used:
                continue
            d.used.add("earned")
            e = rng.randint(2, 40)
            d.sentences.append(f"{d.subject()} earns ${e} {rng.choice(CHORES)}.")
            d.lines.append(f"earned = {e}")
            d.apply("+", "earned", e, str(e))
            steps -= 1
        else:
            if "cost" in d.used:
                continue
            goods = rng.choice(GOODS)
            n = rng.randint(2, 9)
            if d.value // n < 1:
                raise _Retry
            p = rng.randint(1, min(d.value // n, 12))
            d.used.update({"cost", goods})
            d.sentences.append(f"{d.subject()} buys {n} {goods} at ${p} each.")
            d.lines += [f"{goods} = {n}", f"price = {p}", f"cost = {goods} * price"]
            d.apply("-", "cost", n * p, f"{n}*{p}")
            d.ops += 1
            steps -= 2
    if share:
        divisors = [k for k in range(2, 10) if d.value % k == 0 and d.value // k >= 1]
        if not divisors:
            raise _Retry
        k = rng.choice(divisors)
        d.sentences.append(f"{d.subject()} splits the rest equally among {k} piggy banks.")
        d.lines += [f"banks = {k}", "assert money % banks == 0", "each = money // banks",
                    "print(each)"]
        d.expr, d.value, d.ops = f"({d.expr}//{k})", d.value // k, d.ops + 1
        return "How many dollars go into each piggy bank?"
    d.lines.append("print(money)")
    return rng.choice([f"How many dollars does {d.name} have left?",
                       f"How much money does {d.name} have now, in dollars?"])


# ---------------------------------------------------------------------------- shopping bill


def _bill(d: _Draft, level: int) -> str:
    rng = d.rng
    d.var = "total"
    change = level >= 2 and rng.random() < 0.5
    steps = level - 1 - int(change)  # the first purchase is a multiplication
    goods = rng.choice(GOODS)
    n, p = rng.randint(2, 9), rng.randint(1, 15)
    d.sentences.append(f"{d.name} buys {n} {goods} for ${p} each.")
    d.lines += [f"{goods} = {n}", f"price = {p}", f"total = {goods} * price"]
    d.value, d.expr, d.ops = n * p, f"{n}*{p}", 1
    d.used.add(goods)
    while steps > 0:
        if steps >= 2 and rng.random() < 0.4 and "more_price" not in d.used:
            other = d.pick([g for g in GOODS])
            n2, p2 = rng.randint(2, 9), rng.randint(1, 12)
            d.used.add("more_price")
            d.sentences.append(f"{d.subject()} also buys {n2} {other} for ${p2} each.")
            d.lines += [f"{other} = {n2}", f"more_price = {p2}", f"cost = {other} * more_price"]
            d.used.add("cost")
            d.apply("+", "cost", n2 * p2, f"{n2}*{p2}")
            d.ops += 1
            steps -= 2
        elif rng.random() < 0.25 and "discount" not in d.used and d.value >= 2:
            off = rng.randint(1, min(d.value - 1, 10))
            d.used.add("discount")
            d.sentences.append(f"{d.subject()} uses a coupon for ${off} off.")
            d.lines.append(f"discount = {off}")
            d.apply("-", "discount", off, str(off))
            steps -= 1
        else:
            thing = d.pick(THINGS)
            q = rng.randint(1, 30)
            d.sentences.append(f"{d.subject()} also buys a {thing} for ${q}.")
            d.lines.append(f"{thing} = {q}")
            d.apply("+", thing, q, str(q))
            steps -= 1
    if change:
        bill = next(b for b in (10, 20, 50, 100, 200, 500) if b >= d.value)
        d.sentences.append(f"{d.subject()} pays with a ${bill} bill.")
        d.lines += [f"paid = {bill}", "change = paid - total", "print(change)"]
        d.expr, d.value, d.ops = f"({bill}-{d.expr})", bill - d.value, d.ops + 1
        return f"How much change does {d.name} get, in dollars?"
    d.lines.append("print(total)")
    return rng.choice([f"How many dollars does {d.name} spend in total?",
                       f"How much does {d.name} pay in all, in dollars?"])


_FAMILIES = ((_collection, 0.55), (_money, 0.25), (_bill, 0.20))


def _draw(rng: random.Random, level: int) -> tuple[str, str, int, str]:
    """One problem of exactly ``level`` operations: (question, program, answer, expression)."""
    while True:
        name, friend = rng.sample(sorted(NAMES), 2)
        d = _Draft(rng, name, friend)
        family = rng.choices([f for f, _ in _FAMILIES], weights=[w for _, w in _FAMILIES])[0]
        try:
            question = family(d, level)
        except _Retry:
            continue
        if d.ops != level:  # a family could not place the requested steps exactly
            continue
        return " ".join(d.sentences + [question]), "\n".join(d.lines), d.value, d.expr


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def split_of(expression: str) -> str:
    """The split an arithmetic expression belongs to, whatever the seed that drew it."""
    return "test" if int(_sha(expression)[:8], 16) % 100 < TEST_PERCENT else "train"


def generate_problems(
    n: int, split: str = "train", seed: int = 0, levels: Sequence[int] = DEFAULT_LEVELS
) -> list[dict]:
    """``n`` problems of ``split``, levels in turn, deterministic for ``seed``.

    Each row: ``id`` (``arith-<level>-<hash8>``), ``question``, ``answer`` (a string such as
    "17"), ``program`` (the reference PoT program, printing the answer last) and ``level``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad or not levels:
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {list(levels)}")
    rng = random.Random(f"mathforge-arith:{split}:{seed}:{','.join(map(str, levels))}")
    rows: list[dict] = []
    seen: set[str] = set()
    for i in range(n):
        level = levels[i % len(levels)]
        for _ in range(_MAX_TRIES):
            question, program, answer, expr = _draw(rng, level)
            if expr not in seen and split_of(expr) == split:
                break
        else:
            raise RuntimeError(f"arith: could not draw {n} distinct level-{level} {split} problems "
                               f"(stopped at {len(rows)}); ask for fewer")
        seen.add(expr)
        rows.append({"id": f"arith-{level}-{_sha(expr)[:8]}", "question": question,
                     "answer": str(answer), "program": program, "level": level})
    return rows


def parse_spec(spec: str, seed: int = 0) -> tuple[str, int, int, tuple[int, ...]]:
    """``(split, n, seed, levels)`` of a source spec's part after ``arith:``:
    ``<split>[:n[:seed]][:levels=L[,L...]]`` (see :func:`problems_from_spec`). ValueError names what
    is wrong."""
    parts = spec.split(":")
    options = {}
    positional = []
    for part in parts:
        key, sep, value = part.partition("=")
        if sep:
            if key not in ("levels",):
                raise ValueError(f"unknown option {key!r} (known: levels)")
            options[key] = value
        elif options:
            raise ValueError(f"{part!r} comes after an option; write <split>[:n[:seed]][:levels=...]")
        else:
            positional.append(part)
    if not positional or positional[0] not in SPLITS or len(positional) > 3:
        raise ValueError(f"expected <split>[:n[:seed]][:levels=...] with split one of {SPLITS}, got {spec!r}")
    try:
        n = int(positional[1]) if len(positional) > 1 and positional[1] else 500
        s = int(positional[2]) if len(positional) > 2 and positional[2] else seed
        levels = tuple(int(x) for x in options["levels"].split(",")) if "levels" in options else DEFAULT_LEVELS
    except ValueError as e:
        raise ValueError(f"n, seed and levels must be integers in {spec!r}") from e
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return positional[0], n, s, levels


def problems_from_spec(spec: str, seed: int = 0) -> list[dict]:
    """Problems of a source spec's part after ``arith:``: ``<split>[:n[:seed]][:levels=L[,L...]]``.

    ``n`` defaults to 500 and ``seed`` to the caller's; ``levels`` (default 1,2,3, the SFT data's)
    names the numbers of operations, so ``test:300:0:levels=4`` is the hard held-out split: one
    operation more than the usual data, never sharing a computation with any train problem.
    ValueError names what is wrong.
    """
    split, n, s, levels = parse_spec(spec, seed)
    return generate_problems(n, split=split, seed=s, levels=levels)


def write_split(
    path: str | os.PathLike, n: int, split: str = "train", seed: int = 0,
    levels: Sequence[int] = DEFAULT_LEVELS,
) -> Path:
    """Write ``generate_problems(...)`` as jsonl, atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for row in generate_problems(n, split, seed, levels):
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return path


# The program styles of the tokenizer's corpus, in turn: a chat teacher's styles
# (stages.common.pot_style), so that comment words and prints are tokens of their own, as they are
# in a real model's vocabulary, rather than runs of bytes.
CORPUS_STYLES = ("plain", "comments+answer_var", "plain", "comments+prints+answer_var")


def corpus_text(n: int = 3000, seed: int = 0) -> str:
    """Text to train the tokenizer on: the task's questions and completions (the programs in the
    teacher styles of ``CORPUS_STYLES``) inside the ChatML layout that the chat template produces,
    with the system prompt, so that the tokenizer spends its vocabulary on exactly what the model
    reads and writes."""
    parts = []
    for i, row in enumerate(generate_problems(n, "train", seed, levels=LEVELS)):
        program = apply_style(row["program"], CORPUS_STYLES[i % len(CORPUS_STYLES)], row["id"]) or row["program"]
        parts.append(
            f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
            f"<|im_start|>user\n{row['question']}<|im_end|>\n"
            f"<|im_start|>assistant\n{format_completion(program)}<|im_end|>\n"
        )
    return "".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m stages.common.arith", description=__doc__.split("\n")[0])
    p.add_argument("--split", choices=SPLITS, default="train")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--levels", default="1,2,3", help="comma-separated, from 1,2,3,4")
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    levels = tuple(int(x) for x in args.levels.split(","))
    out = write_split(args.output, args.n, args.split, args.seed, levels)
    print(f"wrote {args.n} {args.split} problems to {out}")


if __name__ == "__main__":
    main()
