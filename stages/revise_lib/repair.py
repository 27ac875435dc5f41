"""The revision loop (StepCo-style verify-then-revise), one function shared by the revise stage and
eval's pass@1 with repair.

    records = repair(policy, items, RepairOptions(rounds=3), scorer=prm_scorer)

Each round, for every item still open, in one batch:

- **verify**: the sandbox runs the program and the PRM (when there is one) scores every step;
- **flag** (:func:`flag_step`): the step to revise is the first step whose PRM score is under
  ``threshold``, or the step holding the line where the program raised (the traceback's line,
  mapped to its step), whichever comes first; with neither, the lowest-scored step. A program that
  runs, prints an answer and has every step at or above the threshold is not flagged: done. No gold
  answer is used anywhere in the loop;
- **revise**: the policy gets the problem, the program with numbered steps, the flagged step and
  why ("Step 3 scored 0.21 by the verifier", "Step 4 raised ZeroDivisionError: division by zero")
  and rewrites from that step on; the steps before it are prefilled in the assistant turn, so they
  are kept verbatim (:func:`revision_prompt`; ``prompt: prefill`` keeps the plain PoT prompt and
  only prefills, a form of revision an untrained policy already knows). A revision whose program
  grows past ``(1 + max_growth) x`` the original's tokens (+ ``growth_slack``) is rejected.

An item stops when it verifies, when every candidate revision repeats an earlier version (the
normalized program, :func:`stages.common.pot.program_key`; unless the next round starts over, see
``restart_after``), or after ``rounds`` rounds. With ``restart_after: k``, rounds after the k-th
rewrite the whole program for the same reason: a policy that repeats its slip from the kept steps
often does not from the start. Every
round is recorded: the flagged step, the reason, the revision, its run and its step scores.

With ``golds`` (the revise stage, which makes training data from problems with known answers; never
eval), the gold decides when an item is done instead of the verifier: a version whose answer the
gold accepts stops the item (``stop: gold``) and is its final version, and a version the verifier
passes but the gold rejects is revised again from its lowest-scored step (counted as a
``verifier_false_pass``). The revision request itself still carries only the verifier's reason:
the policy is never shown the gold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rewards import is_equivalent
from rewards.functions import AGGREGATIONS
from rewards.scoring import printed_answer, readable_gold, run_programs
from stages.common.generation import generate
from stages.common.pot import build_messages, extract_program, program_key
from stages.common.steps import split_program
from stages.revise_lib.grounding import check_grounding

PROMPTS = ("feedback", "prefill")
FINALS = ("best", "vote", "last")
# The file name the sandbox gives a program in its tracebacks (sandbox/_server.py, PROGRAM_NAME).
_FRAME_RE = re.compile(r'File "<program>", line (\d+)')
_FENCE_TOKENS = 8  # room for the closing fence after the program, in tokens


@dataclass
class RepairOptions:
    """How the loop flags, revises and stops (the stage's recipe and eval's ``--repair_*`` flags)."""

    rounds: int = 3
    threshold: float | None = 0.5      # a step scored under it by the PRM is flagged; None: the PRM only ranks
    aggregation: str = "min"           # a version's PRM score (ranking, reports): min, product, last, mean
    prompt: str = "feedback"           # feedback (numbered steps + reason) or prefill (the plain PoT prompt)
    max_growth: float = 0.5            # a revised program may have at most (1 + max_growth) x the original's tokens
    growth_slack: int = 16             # ... plus this many (a one-line program may still gain a line)
    max_new_tokens: int = 256          # generation budget of one revision
    temperature: float = 0.0           # 0: greedy revisions
    top_p: float = 1.0
    candidates: int = 1                # revisions sampled per round; the verifier keeps the best
    batch_size: int = 64
    seed: int = 0
    final: str = "best"                # best: the best-verified version (later wins ties); vote: see _record;
                                       # last: the last one
    restart_after: int | None = None   # rounds revising from the flagged step; later rounds rewrite the whole
                                       # program (a policy that repeats its slip from the kept steps may not from
                                       # the start); None: always from the flagged step
    grounding: bool = False            # also flag a program that leaves a number of the problem unused or writes
                                       # one the problem does not give (stages.revise_lib.grounding)

    def check(self) -> None:
        """Raise ValueError naming the option that cannot work."""
        problems = []
        if self.rounds < 1:
            problems.append(f"rounds must be >= 1, got {self.rounds}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            problems.append(f"threshold must be in [0, 1] (or null), got {self.threshold}")
        if self.aggregation not in AGGREGATIONS:
            problems.append(f"aggregation must be one of {sorted(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.prompt not in PROMPTS:
            problems.append(f"prompt must be one of {PROMPTS}, got {self.prompt!r}")
        if self.final not in FINALS:
            problems.append(f"final must be one of {FINALS}, got {self.final!r}")
        if self.max_growth < 0 or self.growth_slack < 0:
            problems.append("max_growth and growth_slack must be >= 0")
        if self.restart_after is not None and self.restart_after < 0:
            problems.append(f"restart_after must be >= 0 (or null), got {self.restart_after}")
        if self.candidates < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            problems.append("candidates, max_new_tokens and batch_size must be >= 1")
        if self.candidates > 1 and self.temperature <= 0:
            problems.append("candidates > 1 needs temperature > 0 (greedy candidates are identical)")
        if problems:
            raise ValueError("; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Verification


@dataclass
class Verification:
    """What the verifier knows about one completion: its steps, its run and its step scores."""

    program: str | None
    steps: list[str]
    spans: list[tuple[int, int]]          # first and last line (1-based) of each step in the program
    status: str                           # the sandbox's status, or "no_code"
    error_type: str | None = None
    error: str | None = None              # the last line of the traceback ("ZeroDivisionError: ...")
    error_line: int | None = None         # the program line that raised (1-based)
    answer: str | None = None             # the last line the program printed
    scores: list[float] | None = None     # PRM step scores (None: no PRM)
    score: float | None = None            # their aggregate
    program_tokens: int = 0
    grounding: tuple[int, str] | None = None  # the first quantity slip: (0-based step, reason); None: none or unchecked

    @property
    def runs(self) -> bool:
        """The program exited normally and printed an answer."""
        return self.status == "ok" and self.answer is not None

    @property
    def error_step(self) -> int | None:
        return None if self.error_line is None else step_of_line(self.spans, self.error_line)

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, "error_type": self.error_type, "error": self.error,
                "error_step": None if self.error_step is None else self.error_step + 1, "answer": self.answer,
                "step_scores": self.scores, "score": self.score, "n_steps": len(self.steps),
                "program_tokens": self.program_tokens, "grounding": self.grounding[1] if self.grounding else None}


def step_spans(program: str, steps: Sequence[str]) -> list[tuple[int, int]]:
    """First and last line (1-based) of each step of ``program`` (steps are contiguous pieces of
    the program in order, as :func:`stages.common.steps.split_program` cuts them)."""
    spans, pos = [], 0
    for step in steps:
        at = program.find(step, pos)
        if at < 0:  # cannot happen for split_program's steps; keep the spans aligned anyway
            at = pos
        first = program.count("\n", 0, at) + 1
        spans.append((first, first + step.count("\n")))
        pos = at + len(step)
    return spans


def step_of_line(spans: Sequence[tuple[int, int]], line: int) -> int | None:
    """The step (0-based) holding program line ``line``: the step whose lines include it, else the
    first step after it (a blank or comment line), else the last step."""
    if not spans:
        return None
    for k, (first, last) in enumerate(spans):
        if first <= line <= last:
            return k
    for k, (first, _) in enumerate(spans):
        if first > line:
            return k
    return len(spans) - 1


def traceback_line(stderr: str | None) -> int | None:
    """The program line where a run raised: the innermost frame of the program in its traceback
    (a SyntaxError names its line the same way)."""
    found = _FRAME_RE.findall(stderr or "")
    return int(found[-1]) if found else None


def traceback_message(stderr: str | None, limit: int = 160) -> str | None:
    """The traceback's last line, e.g. ``ZeroDivisionError: division by zero``."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else None


def verifier_signal(prm: bool, grounding: bool) -> str:
    """What a verifier checks, as results and logs name it: ``sandbox``, ``prm+sandbox``, ``+grounding``."""
    return ("prm+sandbox" if prm else "sandbox") + ("+grounding" if grounding else "")


class Verifier:
    """The sandbox, (optionally) a PRM scorer and (optionally) the quantity-grounding check, on
    batches of completions: no gold answer."""

    def __init__(self, tokenizer: Any, scorer: Any = None, *, aggregation: str = "min", sandbox: Any = None,
                 grounding: bool = False, memo: Any = None):
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.aggregate = AGGREGATIONS[aggregation]
        self.sandbox = sandbox
        self.grounding = grounding
        self.memo = memo  # a rewards.ExecMemo: programs already run (eval's judge) are not run again
        # the PRM's step scores by (question, steps): a version scored once (the loop's, then the best-of
        # comparison's view of the same greedy answer) is not scored again; one entry per distinct version
        # this verifier saw (a verifier lives for one loop, or one evaluation)
        self._scores: dict[tuple[str, tuple[str, ...]], list[float]] = {}

    @property
    def signal(self) -> str:
        return verifier_signal(self.scorer is not None, self.grounding)

    def verify(self, questions: Sequence[str], completions: Sequence[str], *, prm: bool = True) -> list[Verification]:
        """Run and check every completion; ``prm=False`` leaves the PRM's scores for :meth:`add_scores`.
        Equal (question, completion) pairs are checked once and share one verification (a policy's
        candidates often repeat each other)."""
        keys = list(zip(questions, completions, strict=True))
        distinct = list(dict.fromkeys(keys))
        if len(distinct) < len(keys):
            checked = dict(zip(distinct, self.verify([q for q, _ in distinct], [c for _, c in distinct], prm=prm),
                               strict=True))
            return [checked[k] for k in keys]
        programs = [extract_program(c) for c in completions]
        steps = [split_program(p) if p is not None else [] for p in programs]
        to_run = [p for p in programs if p is not None]
        results = iter(run_programs(to_run, self.sandbox, self.memo) if to_run else [])
        scores: list[list[float] | None] = [None] * len(completions)
        if self.scorer is not None and prm:
            scored = [i for i, s in enumerate(steps) if s]
            for i, s in zip(scored, self._score([questions[i] for i in scored], [steps[i] for i in scored]),
                            strict=True):
                scores[i] = s
        lengths = token_counts(self.tokenizer, [p or "" for p in programs])
        out = []
        for question, program, st, sc, n in zip(questions, programs, steps, scores, lengths, strict=True):
            if program is None:
                out.append(Verification(None, [], [], "no_code"))
                continue
            res = next(results)
            failed = res.status != "ok"
            out.append(Verification(
                program, st, step_spans(program, st), res.status, res.error_type,
                traceback_message(res.stderr) if failed else None,
                traceback_line(res.stderr) if failed else None,
                res.answer, sc, float(self.aggregate(sc)) if sc else None, n,
                check_grounding(question, st) if self.grounding else None))
        return out

    def add_scores(self, questions: Sequence[str], verifications: Sequence[Verification]) -> None:
        """The PRM's step scores (and their aggregate) for verifications made with ``prm=False``."""
        todo = [(q, v) for q, v in zip(questions, verifications, strict=True) if v.steps and v.scores is None]
        if self.scorer is None or not todo:
            return
        for (_, v), s in zip(todo, self._score([q for q, _ in todo], [v.steps for _, v in todo]), strict=True):
            v.scores = s
            v.score = float(self.aggregate(v.scores)) if v.scores else None

    def _score(self, questions: Sequence[str], steps: Sequence[list[str]]) -> list[list[float]]:
        """The PRM's step scores, each distinct (question, steps) scored once, in one batch."""
        keys = [(q, tuple(st)) for q, st in zip(questions, steps, strict=True)]
        missing = [k for k in dict.fromkeys(keys) if k not in self._scores]
        if missing:
            out = self.scorer.score_steps([q for q, _ in missing], [list(st) for _, st in missing])
            for k, s in zip(missing, out, strict=True):
                self._scores[k] = [float(x) for x in s]
        return [list(self._scores[k]) for k in keys]


def token_counts(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


# ---------------------------------------------------------------------------------------------
# Flagging


@dataclass
class Flag:
    """The step to revise from (0-based; 0 rewrites the whole program) and why."""

    step: int
    reason: str
    kind: str  # no_program | error | timeout | no_answer | ungrounded | low_score | lowest | forced

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step + 1, "reason": self.reason, "kind": self.kind}


def _lowest(v: Verification) -> int | None:
    if not v.scores:
        return None
    return min(range(len(v.scores)), key=lambda k: (v.scores[k], k))


def flag_step(v: Verification, threshold: float | None, *, force: bool = False) -> Flag | None:
    """The step to revise, or None when the verifier passes the program (it runs, prints an answer,
    every PRM step score is at or above ``threshold`` and, when checked, it has no quantity slip).
    ``force`` flags a program the verifier passes (an outside signal says it is wrong): its
    lowest-scored step, or the whole program without step scores."""
    if v.program is None or not v.steps:
        return Flag(0, "The answer has no ```python block" if v.program is None else "The program has no statement",
                    "no_program")
    found: list[tuple[int, str, str]] = []
    if v.status != "ok":
        step = v.error_step
        if step is not None:
            found.append((step, f"step {step + 1} raised {v.error or v.error_type}", "error"))
        else:
            what = "did not finish in time" if v.status == "timeout" else f"failed ({v.error_type or v.status})"
            low = _lowest(v)
            found.append((low if low is not None else 0, f"the program {what}",
                          "timeout" if v.status == "timeout" else "error"))
    elif v.answer is None:
        found.append((len(v.steps) - 1, "the program printed no answer", "no_answer"))
    if v.grounding is not None:
        found.append((v.grounding[0], v.grounding[1], "ungrounded"))
    if v.scores and threshold is not None:
        under = next((k for k, s in enumerate(v.scores) if s < threshold), None)
        if under is not None:
            found.append((under, f"step {under + 1} scored {v.scores[under]:.2f} by the verifier", "low_score"))
    if not found:
        if not force:
            return None
        low = _lowest(v)
        if low is None:
            return Flag(0, "The answer may be wrong", "forced")
        return Flag(low, f"Step {low + 1} has the verifier's lowest score ({v.scores[low]:.2f})", "lowest")
    found.sort(key=lambda f: f[0])
    step, kind = found[0][0], found[0][2]
    reason = "; ".join(dict.fromkeys(r for _, r, _ in found))
    return Flag(step, reason[0].upper() + reason[1:], kind)


# ---------------------------------------------------------------------------------------------
# Prompts


def numbered_program(steps: Sequence[str]) -> str:
    """The program in a python block, each step under a ``# step k`` line."""
    body = "\n".join(f"# step {k}\n{s}" for k, s in enumerate(steps, start=1))
    return f"```python\n{body}\n```"


def feedback_request(question: str, steps: Sequence[str], flag: Flag) -> str:
    """The user turn of a revision: the problem, the numbered program, the flag and what to do."""
    if flag.kind == "no_program" or not steps:
        return f"{question}\n\n{flag.reason}. Write the program."
    ask = ("Rewrite the whole program." if flag.step == 0 else
           f"Rewrite the program from step {flag.step + 1} on, keeping steps 1 to {flag.step} as they are.")
    return (f"{question}\n\nA program for this problem, with numbered steps:\n{numbered_program(steps)}\n"
            f"{flag.reason}. {ask}")


def kept_prefix(steps: Sequence[str], flag: Flag) -> str:
    """The assistant turn's prefill: the opening fence and the steps before the flagged one."""
    kept = "\n".join(steps[: flag.step])
    return "```python\n" + (kept + "\n" if kept else "")


def revision_messages(question: str, steps: Sequence[str], flag: Flag, prompt: str = "feedback") -> list[dict]:
    """The chat messages of a revision request (without the prefilled assistant turn)."""
    if prompt == "prefill":
        return build_messages(question)
    return build_messages(feedback_request(question, steps, flag))


def revision_prompt(tokenizer: Any, question: str, steps: Sequence[str], flag: Flag, prompt: str = "feedback") -> str:
    """The templated prompt text of a revision, the kept steps prefilled in the assistant turn."""
    text = tokenizer.apply_chat_template(revision_messages(question, steps, flag, prompt), tokenize=False,
                                         add_generation_prompt=True)
    return text + kept_prefix(steps, flag)


def growth_limit(original_tokens: int | None, options: RepairOptions) -> int:
    """The most program tokens a revision may have (no original program: the generation budget)."""
    if not original_tokens:
        return options.max_new_tokens
    return math.ceil(original_tokens * (1.0 + options.max_growth)) + options.growth_slack


# ---------------------------------------------------------------------------------------------
# The loop


def version_rank(v: Verification, flag: Flag | None) -> tuple:
    """How the verifier orders versions: passing first, then running, then the PRM score."""
    return (flag is None, v.runs, v.score if v.score is not None else 0.0)


@dataclass
class _Item:
    question: str
    force: bool
    limit: int
    versions: list[tuple[str, Verification, Flag | None]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    rounds: list[dict] = field(default_factory=list)
    stop: str | None = None
    extra_tokens: int = 0
    pool: list[tuple[str, Verification, Flag | None]] = field(default_factory=list)  # every distinct version seen
    votes: dict[str, list[float]] = field(default_factory=dict)  # answer -> [runs printing it, their summed score]
    gold: str | None = None            # the readable gold answer (the revise stage only); None: the verifier decides
    false_passes: int = 0              # versions the verifier passed and the gold rejected
    plain_samples: list[str] = field(default_factory=list)  # candidates drawn under the plain prompt (see _record)

    def flag(self, v: Verification, threshold: float | None, *, force: bool = False) -> Flag | None:
        """The version's flag: by the gold when the item has one (right: None; wrong: the verifier's flag,
        or its lowest-scored step when the verifier passes it), else by the verifier alone."""
        if self.gold is None:
            return flag_step(v, threshold, force=force)
        if gold_accepts(v, self.gold):
            return None
        flag = flag_step(v, threshold)
        if flag is None:
            self.false_passes += 1
            flag = flag_step(v, threshold, force=True)
        return flag

    def over_growth(self, v: Verification) -> bool:
        """Whether a candidate's program is past the growth limit (it is rejected)."""
        return v.program is not None and v.program_tokens > self.limit

    def repeats(self, v: Verification) -> bool:
        """Whether a candidate's program is one of the item's versions already (normalized)."""
        return v.program is not None and program_key(v.program) in self.keys

    def vote(self, v: Verification) -> None:
        if v.runs:
            count = self.votes.setdefault(v.answer, [0, 0.0])
            count[0] += 1
            count[1] += v.score if v.score is not None else 0.0

    @property
    def current(self) -> tuple[str, Verification, Flag | None]:
        return self.versions[-1]


def gold_accepts(v: Verification, gold: str) -> bool:
    """Whether the version ran and printed the gold answer (``gold``: a readable gold answer), judged
    as ``rewards.score_pot`` judges it."""
    return v.status == "ok" and is_equivalent(printed_answer(v.answer), gold)


def repair(policy: Any, items: Sequence[dict], options: RepairOptions | None = None, *, scorer: Any = None,
           force: Sequence[bool] | None = None, golds: Sequence[str | None] | None = None, sandbox: Any = None,
           memo: Any = None, verifier: Verifier | None = None, progress: bool = False) -> list[dict]:
    """Verify and revise ``items`` (``{"id", "question", "completion"}``) for at most
    ``options.rounds`` rounds; one record per item (see :func:`record_fields`). ``scorer`` is a
    PRM scorer (``score_steps(questions, steps)``) or None (the sandbox signal alone); ``force``
    marks items to revise even when the verifier passes them (the revise stage's known-wrong
    inputs); ``golds`` (the revise stage only, never eval) lets the gold decide when an item is done
    (see the module's docstring; an unreadable gold leaves that item to the verifier). ``memo`` (a
    ``rewards.ExecMemo``) holds sandbox results already known (eval's judge ran the same programs).
    ``verifier`` (instead of ``scorer``, ``sandbox`` and ``memo``) is a :class:`Verifier` to share with
    the caller (eval's best-of comparison verifies the same greedy answers), built with the options'
    aggregation and grounding. ``policy`` has ``model`` and ``tokenizer``."""
    options = options or RepairOptions()
    options.check()
    tokenizer = policy.tokenizer
    if verifier is None:
        verifier = Verifier(tokenizer, scorer, aggregation=options.aggregation, sandbox=sandbox,
                            grounding=options.grounding, memo=memo)
    elif verifier.grounding != options.grounding or verifier.aggregate is not AGGREGATIONS[options.aggregation]:
        raise ValueError("repair: the verifier given was built with other grounding or aggregation options")
    scorer = verifier.scorer
    force = list(force) if force is not None else [False] * len(items)
    golds = [readable_gold(g) for g in golds] if golds is not None else [None] * len(items)
    if len(golds) != len(items):
        raise ValueError(f"repair: {len(items)} items but {len(golds)} golds")
    questions = [it["question"] for it in items]
    # Without a threshold the PRM flags nothing: it only ranks the versions of an item the loop revises, so
    # it scores those alone (on eval's greedy answers, most of which nothing flags, that is most of its cost).
    lazy = options.threshold is None and scorer is not None
    # In eval (no gold, nothing forced, the best-ranked version kept) it ranks only where the sandbox and the
    # quantity check leave a tie at the top: a candidate or version outranked by them is never scored.
    by_need = lazy and options.final != "vote" and not any(force) and all(g is None for g in golds)
    first = verifier.verify(questions, [it["completion"] for it in items], prm=not lazy)
    if by_need:
        _score_to_flag(verifier, questions, first)
    elif lazy:
        revised = [i for i, v in enumerate(first) if force[i] or golds[i] is not None or flag_step(v, None)]
        verifier.add_scores([questions[i] for i in revised], [first[i] for i in revised])
    state: list[_Item] = []
    for it, v, f, gold in zip(items, first, force, golds, strict=True):
        item = _Item(it["question"], f, growth_limit(v.program_tokens, options), gold=gold)
        flag = item.flag(v, options.threshold, force=f)
        item.versions.append((it["completion"], v, flag))
        item.pool.append((it["completion"], v, flag))
        item.vote(v)
        if v.program is not None:
            item.keys.add(program_key(v.program))
        if flag is None:
            item.stop = "not_flagged"
        state.append(item)
    for rnd in range(1, options.rounds + 1):
        active = [i for i, s in enumerate(state) if s.stop is None]
        if not active:
            break
        _revise_round(policy, verifier, state, active, rnd, options, progress, by_need)
    for s in state:
        if s.stop is None:
            s.stop = "rounds"
    if by_need:  # the final choice ranks the versions: score those tied at the top
        tied = [(s.question, v) for s in state for v in top_tier([(v, f) for _, v, f in s.versions])]
        verifier.add_scores([q for q, _ in tied], [v for _, v in tied])
    return [_record(it, s, options) for it, s in zip(items, state, strict=True)]


def _score_to_flag(verifier: Verifier, questions: Sequence[str], checked: Sequence[Verification]) -> None:
    """Score the versions whose flag reads the PRM without a threshold: a failed run with no line to
    blame is flagged at its lowest-scored step (:func:`flag_step`)."""
    need = [k for k, v in enumerate(checked) if v.program is not None and v.steps and v.status != "ok"
            and v.error_step is None]
    verifier.add_scores([questions[k] for k in need], [checked[k] for k in need])


def top_tier(ranked: Sequence[tuple[Verification, Flag | None]]) -> list[Verification]:
    """The versions (or candidates) that share the best rank the sandbox and the flag give (passing, then running),
    when more than one does: only the PRM's score can order them."""
    if not ranked:
        return []
    tiers = [version_rank(v, f)[:-1] for v, f in ranked]  # the rank without the PRM's score
    best = max(tiers)
    top = [v for (v, _), tier in zip(ranked, tiers, strict=True) if tier == best]
    return top if len(top) > 1 else []


def _round_flag(s: _Item, rnd: int, options: RepairOptions) -> Flag:
    """The flag round ``rnd`` revises from: the current version's, or (after ``restart_after`` rounds)
    the same reason with the whole program rewritten."""
    _, _, flag = s.current
    if options.restart_after is not None and rnd > options.restart_after and flag.step > 0:
        return Flag(0, flag.reason, flag.kind)
    return flag


def plain_sampling(options: RepairOptions, flag: Flag) -> bool:
    """Whether a round from ``flag`` samples under the plain PoT prompt: the ``prefill`` prompt with no
    step kept is the problem's PoT prompt with the opening fence prefilled, so its candidates are fresh
    samples of the policy (what eval's best-of comparison draws; see ``plain_samples`` in the record)."""
    return options.prompt == "prefill" and flag.step == 0


def _revise_round(policy: Any, verifier: Verifier, state: list[_Item], active: list[int], rnd: int,
                  options: RepairOptions, progress: bool, by_need: bool = False) -> None:
    tokenizer = policy.tokenizer
    prompts, prefixes, budgets, remaining = [], [], [], []
    for i in active:
        _, v, _ = state[i].current
        flag = _round_flag(state[i], rnd, options)
        prompts.append(revision_prompt(tokenizer, state[i].question, v.steps, flag, options.prompt))
        prefixes.append(kept_prefix(v.steps, flag))
    kept_tokens = token_counts(tokenizer, [p[len("```python\n"):] for p in prefixes])
    for i, k in zip(active, kept_tokens, strict=True):
        budgets.append(max(1, state[i].limit - k) + _FENCE_TOKENS)
        remaining.append(max(0, (state[i].current[1].program_tokens or 0) - k))  # what the revision rewrites
    budget = min(options.max_new_tokens, max(budgets))
    outs = generate(policy.model, tokenizer, prompts, max_new_tokens=budget, batch_size=options.batch_size,
                    num_return_sequences=options.candidates, temperature=options.temperature, top_p=options.top_p,
                    seed=options.seed + 7919 * rnd, progress=progress, expected_tokens=remaining)
    flat = [(j, prefixes[j] + text) for j, texts in enumerate(outs) for text in texts]
    generated = token_counts(tokenizer, [text for texts in outs for text in texts])
    questions = [state[active[j]].question for j, _ in flat]
    checked = verifier.verify(questions, [c for _, c in flat], prm=not by_need)
    if by_need:
        _score_to_flag(verifier, questions, checked)
    by_item: dict[int, list[tuple[str, Verification, int]]] = {}
    for (j, completion), v, n in zip(flat, checked, generated, strict=True):
        by_item.setdefault(j, []).append((completion, v, n))
    deterministic = options.temperature <= 0
    if by_need:  # the PRM orders only the new candidates tied at the top of an item (see the loop below)
        tied = []
        for j, i in enumerate(active):
            s = state[i]
            new = [(v, s.flag(v, options.threshold)) for _, v, _ in by_item[j]
                   if not s.over_growth(v) and not s.repeats(v)]
            tied += [(s.question, v) for v in top_tier(new)]
        verifier.add_scores([q for q, _ in tied], [v for _, v in tied])
    for j, i in enumerate(active):
        s = state[i]
        flag = _round_flag(s, rnd, options)
        tried = by_item[j]
        s.extra_tokens += sum(n for _, _, n in tried)
        fresh, outcome = [], "repeat"
        for completion, v, n in tried:
            if s.over_growth(v):
                outcome = "over_growth" if outcome == "repeat" else outcome
                continue
            s.vote(v)
            if s.repeats(v):
                continue
            fresh.append((completion, v, n, s.flag(v, options.threshold)))
            s.pool.append((completion, v, fresh[-1][3]))
        if plain_sampling(options, flag):
            s.plain_samples += [completion for completion, _, _ in tried]
        entry = {"round": rnd, "flag": flag.as_dict(), "kept_steps": flag.step, "prompt": options.prompt,
                 "candidates": len(tried), "candidate_answers": [v.answer for _, v, _ in tried],
                 "generated_tokens": sum(n for _, _, n in tried)}
        if not fresh:
            completion, v, _ = tried[0]
            s.rounds.append({**entry, "outcome": outcome, "revision": completion, **v.summary()})
            # the next round starts over (restart_after): the item goes on
            restart_next = rnd < options.rounds and _round_flag(s, rnd + 1, options).step != flag.step
            if (outcome == "repeat" or deterministic) and not restart_next:
                s.stop = outcome
            continue
        completion, v, _, new_flag = max(fresh, key=lambda c: version_rank(c[1], c[3]))
        s.versions.append((completion, v, new_flag))
        if v.program is not None:
            s.keys.add(program_key(v.program))
        s.rounds.append({**entry, "outcome": "accepted", "revision": completion, **v.summary(),
                         "passes": new_flag is None, "next_flag": new_flag.as_dict() if new_flag else None})
        if new_flag is None:
            s.stop = "verified" if s.gold is None else "gold"


def _record(item: dict, s: _Item, options: RepairOptions) -> dict:
    """The item's record. The final version: ``best``, the version the verifier ranks highest (the
    later on ties); ``vote``, the answer printed by the most runs (the original and each round's
    candidates, repeats included: a policy that keeps printing an answer from other prefixes
    supports it; their summed PRM score breaks ties), then the best-ranked version or candidate
    printing it (self-consistency over the loop's own samples); ``last``, the last version."""
    def ranked(pool: list, k: int) -> tuple:
        return version_rank(pool[k][1], pool[k][2]), k

    gold_accepted_last = s.gold is not None and s.versions[-1][2] is None  # then the last version is the final
    if gold_accepted_last or options.final == "last":
        completion, v, flag = s.versions[-1]
    elif options.final == "vote" and s.votes:
        answer = max(s.votes, key=lambda a: (*s.votes[a], a == s.versions[0][1].answer))
        pool = [c for c in s.pool if c[1].runs and c[1].answer == answer]
        completion, v, flag = pool[max(range(len(pool)), key=lambda k: ranked(pool, k))]
    else:
        completion, v, flag = s.versions[max(range(len(s.versions)), key=lambda k: ranked(s.versions, k))]
    final = next((k for k, ver in enumerate(s.versions) if ver[0] == completion), None)
    _, v0, flag0 = s.versions[0]
    return {"id": item.get("id"), "attempted": flag0 is not None, "forced": s.force,
            "flag": flag0.as_dict() if flag0 else None, "initial": v0.summary(), "rounds": s.rounds,
            "final": completion, "final_version": final, "final_verified": flag is None,
            "final_check": v.summary(), "stop": s.stop, "extra_tokens": s.extra_tokens,
            "votes": s.votes if options.final == "vote" else None, "judge": "verifier" if s.gold is None else "gold",
            "verifier_false_passes": s.false_passes, "plain_samples": s.plain_samples}


def record_fields() -> tuple[str, ...]:
    """The fields of a :func:`repair` record: ``attempted`` (flagged by the verifier, or forced),
    ``flag`` (the first flag: step, reason, kind), ``initial`` and ``final_check`` (verifications),
    ``rounds`` (one entry per round: flag, revision, outcome accepted / repeat / over_growth, its
    run and step scores), ``final`` (the completion chosen), ``final_version`` (0: the original; None:
    a candidate of a round that was not kept as a version, chosen by the vote),
    ``stop`` (not_flagged, verified, gold, repeat, over_growth, rounds), ``extra_tokens`` (generated),
    ``judge`` (verifier, or gold with ``golds``), ``verifier_false_passes`` (versions the verifier
    passed and the gold rejected) and ``plain_samples`` (every candidate of the rounds that sampled under
    the plain PoT prompt, see :func:`plain_sampling`, in the order drawn: eval's best-of comparison
    takes its fresh samples from them before it samples more)."""
    return ("id", "attempted", "forced", "flag", "initial", "rounds", "final", "final_version", "final_verified",
            "final_check", "stop", "extra_tokens", "votes", "judge", "verifier_false_passes", "plain_samples")


def demonstration(question: str, previous: str, entry: dict, prompt: str = "feedback") -> dict:
    """A revision demonstration: the request of round ``entry`` (rebuilt from ``previous``, the
    version that round revised, and its flag) and the revised completion, as a supervised row
    with its own chat ``messages``."""
    steps = split_program(extract_program(previous) or "")
    flag = Flag(entry["flag"]["step"] - 1, entry["flag"]["reason"], entry["flag"]["kind"])
    return {"messages": revision_messages(question, steps, flag, prompt), "completion": entry["revision"]}


def revised_versions(original: str, rounds: Sequence[dict]) -> list[tuple[str, dict]]:
    """(the version a round revised, the round) for every accepted round, in order."""
    out, previous = [], original
    for entry in rounds:
        if entry["outcome"] == "accepted":
            out.append((previous, entry))
            previous = entry["revision"]
    return out
