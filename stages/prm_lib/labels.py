"""Step labels for the PRM, all written in TRL's stepwise format ``{"prompt", "completions", "labels"}``
(``prompt`` is the problem text, ``completions`` the steps of ``stages.common.steps.split_solution``).

- Monte-Carlo rollouts (Math-Shepherd): from each step prefix of a policy solution, ``k``
  sampled completions by the policy; hard label = any completion correct, soft label = the
  fraction correct; answers checked by ``rewards.score_pot`` (the sandbox).
- LLM judge: a ChatModel (the synth stage's ``openai`` or ``local`` teacher) rates each step;
  the HE and SE reward transforms turn step verdicts into rewards.
- Importers: PRM800K ratings, Math-Shepherd ``input``/``label`` rows with step tags,
  ProcessRewardTrainer ``input``/``value``/``label`` rows, DreamPRM rows (``### Step N:`` steps,
  per-step ``pi`` soft labels, the solution's outcome ``meta_label``), ``{"text", "label"}`` step
  rows with a label map.
- Mistake mining (generate-and-score): keep the problems whose fail rate over the policy's
  samples lies in [0.3, 0.8] and drop the rest (or only order them).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rewards import score_pot
from stages.common.chat import ChatRequest, complete_cached
from stages.common.data import STEPWISE, DataFormatError, iter_jsonl, validate_row
from stages.common.generation import chat_prompts, generate
from stages.common.pot import format_completion
from stages.common.steps import split_solution

# ---------------------------------------------------------------------------------------------
# Mistake mining


MINING_MODES = ("filter", "order", "none")


def fail_rates(ids: Sequence[str], correct: Sequence[bool]) -> dict[str, float]:
    """Fraction of samples of each problem id that are wrong."""
    totals: dict[str, list[int]] = {}
    for i, ok in zip(ids, correct, strict=True):
        t = totals.setdefault(i, [0, 0])
        t[0] += not ok
        t[1] += 1
    return {i: k / n for i, (k, n) in totals.items()}


def mine_mistakes(fail: dict[str, float], low: float = 0.3, high: float = 0.8, *, mode: str = "filter",
                  limit: int | None = None) -> list[str]:
    """Problem ids for labelling, by the policy's fail rate on each (generate-and-score's mistake
    mining). ``filter`` (the tool's behaviour): only the problems whose fail rate lies in
    [low, high], the ones the policy gets wrong often but not always; the rest are dropped.
    ``order``: every problem, those in the range first, then the rest by distance to it. ``none``:
    every problem as sampled. Ties keep their order; at most ``limit`` ids."""
    if mode not in MINING_MODES:
        raise ValueError(f"mining must be one of {MINING_MODES}, got {mode!r}")

    def distance(r: float) -> float:
        return 0.0 if low <= r <= high else min(abs(r - low), abs(r - high))

    if mode == "filter":
        ids = [i for i, r in fail.items() if low <= r <= high]
    elif mode == "order":
        ids = sorted(fail, key=lambda i: distance(fail[i]))
    else:
        ids = list(fail)
    return ids if limit is None else ids[:limit]


# ---------------------------------------------------------------------------------------------
# Monte-Carlo rollouts


@dataclass
class MCItem:
    question: str
    answer: str
    steps: list[str]
    correct: bool  # the solution's own final answer


def prefix_completion(steps: Sequence[str]) -> str:
    """The open PoT completion a rollout continues: the fence and the first steps."""
    return "```python\n" + "".join(s + "\n" for s in steps)


Rollout = Callable[[list[str], list[str], int], list[list[str]]]


def policy_rollout(model, tokenizer, *, max_new_tokens: int = 128, temperature: float = 1.0, batch_size: int = 32,
                   seed: int = 0) -> Rollout:
    """``(questions, open completions, k) -> k continuations each``, sampled from an HF policy in
    batches (the chat prompt, then the open completion as the start of the assistant turn)."""
    def run(questions: list[str], prefixes: list[str], k: int) -> list[list[str]]:
        heads = chat_prompts(tokenizer, questions)
        return generate(model, tokenizer, [h + p for h, p in zip(heads, prefixes, strict=True)],
                        max_new_tokens=max_new_tokens, batch_size=batch_size, num_return_sequences=k,
                        temperature=temperature, seed=seed)

    return run


def mc_labels(rollout: Rollout, items: Sequence[MCItem], *, k: int = 4, skip_correct: bool = False) -> list[dict]:
    """Math-Shepherd labels: for steps 1..n-1, ``k`` rollouts from the prefix ending at that step
    (all prefixes in one batched call); the last step takes the solution's own correctness.
    Returns stepwise rows with ``labels`` (hard: any rollout correct) and ``soft_labels``
    (fraction correct).

    ``skip_correct``: every prefix of a correct solution has a correct completion (the rest of
    that solution), so its hard labels are all positive without a rollout; only the soft label
    needs them. With it, such prefixes get hard label True and soft label 1.0 (use it with hard
    labels only), and the rollout budget goes to the wrong solutions, where the labels are
    informative."""
    jobs = [(n, i) for n, it in enumerate(items) if not (skip_correct and it.correct) for i in range(1, len(it.steps))]
    prefixes = [prefix_completion(items[n].steps[:i]) for n, i in jobs]
    outs = rollout([items[n].question for n, _ in jobs], prefixes, k) if jobs else []
    texts = [p + c for p, cs in zip(prefixes, outs, strict=True) for c in cs]
    golds = [items[n].answer for n, _ in jobs for _ in range(k)]
    scores = score_pot(texts, golds) if texts else []
    frac: dict[tuple[int, int], float] = {}
    for j, (n, i) in enumerate(jobs):
        frac[(n, i)] = sum(bool(s.correct) for s in scores[j * k : (j + 1) * k]) / k
    rows = []
    for n, it in enumerate(items):
        soft = [frac.get((n, i), 1.0) for i in range(1, len(it.steps))] + [1.0 if it.correct else 0.0]
        rows.append({"prompt": it.question, "completions": list(it.steps), "labels": [s > 0 for s in soft],
                     "soft_labels": soft})
    return rows


# ---------------------------------------------------------------------------------------------
# LLM judge and the HE / SE reward transforms

JUDGE_SYSTEM = ("You check solutions to math problems step by step. For every numbered step, answer on its own "
                "line 'Step N: correct' or 'Step N: incorrect'. A step is correct when it is a valid, useful move "
                "towards the right answer.")
_VERDICT_RE = re.compile(r"step\s*(\d+)\s*[:\-]\s*(correct|incorrect|wrong|right)", re.IGNORECASE)


def judge_messages(question: str, steps: Sequence[str]) -> list[dict[str, str]]:
    body = "\n\n".join(f"Step {i + 1}:\n{s}" for i, s in enumerate(steps))
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Problem:\n{question}\n\nSolution steps:\n{body}"}]


def parse_verdicts(text: str, n_steps: int) -> list[bool] | None:
    """The judge's verdict per step, or None when a step has no verdict."""
    verdicts: dict[int, bool] = {}
    for m in _VERDICT_RE.finditer(text):
        verdicts.setdefault(int(m.group(1)), m.group(2).lower() in ("correct", "right"))
    if not all(i in verdicts for i in range(1, n_steps + 1)):
        return None
    return [verdicts[i] for i in range(1, n_steps + 1)]


def judge_labels(chat_model, cache, items: Sequence[tuple[str, str, list[str]]], *, max_tokens: int = 512,
                 seed: int = 0) -> list[list[bool] | None]:
    """Step verdicts of ``(item id, question, steps)`` items from a ChatModel (``OpenAIChat`` or
    ``LocalChat``), through the synth stage's ``ResponseCache`` (no response is paid twice).
    None where the judge failed or left a step without a verdict."""
    reqs = [(item_id, ChatRequest.of(item_id, judge_messages(q, steps), n=1, temperature=0.0,
                                     max_tokens=max_tokens, seed=seed), [0]) for item_id, q, steps in items]
    texts = {s.item_id: s.text for s in complete_cached(chat_model, cache, reqs)}
    return [parse_verdicts(texts.get(item_id) or "", len(steps)) for item_id, _, steps in items]


def he_rewards(step_correct: Sequence[bool], solution_correct: bool) -> list[float]:
    """HE: +1 only when the step and the whole solution are correct, else -1."""
    return [1.0 if (ok and solution_correct) else -1.0 for ok in step_correct]


def se_rewards(step_correct: Sequence[bool]) -> list[float]:
    """SE: 0.5 + 0.5 * position/steps for a correct step, -0.5 - 0.5 * position/steps for a wrong
    one (position counts from 1, so later steps weigh more)."""
    n = len(step_correct)
    return [(0.5 + 0.5 * (i + 1) / n) if ok else (-0.5 - 0.5 * (i + 1) / n) for i, ok in enumerate(step_correct)]


def rewards_to_labels(rewards: Sequence[float]) -> list[float]:
    """HE/SE rewards in [-1, 1] as soft stepwise labels in [0, 1]."""
    return [(r + 1.0) / 2.0 for r in rewards]


# ---------------------------------------------------------------------------------------------
# Importers (each yields stepwise rows)

PRM800K_BINARIZE = {
    # PRM800K: -1 a wrong step, 0 a neutral (ok but unhelpful) step, +1 a good step
    "three": {-1: "negative", 0: "neutral", 1: "positive"},
    "neutral_positive": {-1: False, 0: True, 1: True},  # Let's Verify Step by Step's convention
    "neutral_negative": {-1: False, 0: False, 1: True},
}


def import_prm800k(path: str, mode: str = "neutral_positive") -> Iterable[dict]:
    """PRM800K rows: ``{"question": {"problem"}, "label": {"steps": [{"completions": [{"text",
    "rating"}], "chosen_completion"}]}}``; each step takes its chosen completion (the first when
    none is chosen) and stops at a step without a rating. ``mode`` picks three classes or one of
    the binarisations in ``PRM800K_BINARIZE``."""
    mapping = PRM800K_BINARIZE[mode]
    for lineno, row in iter_jsonl(path):
        try:
            question = row["question"]["problem"]
            raw_steps = row["label"]["steps"]
        except (KeyError, TypeError) as e:
            raise DataFormatError(path, lineno, "question.problem/label.steps", f"is missing ({e})") from e
        steps, labels = [], []
        for j, st in enumerate(raw_steps):
            comps = st.get("completions") or []
            chosen = st.get("chosen_completion")
            c = comps[chosen if isinstance(chosen, int) else 0] if comps else None
            if c is None or c.get("rating") is None:
                break
            if c["rating"] not in mapping:
                raise DataFormatError(path, lineno, f"label.steps[{j}].rating", f"must be -1, 0 or 1, got {c['rating']!r}")
            steps.append(c["text"])
            labels.append(mapping[c["rating"]])
        if steps:
            yield validate_row({"prompt": question, "completions": steps, "labels": labels}, STEPWISE, path, lineno)


def import_math_shepherd(path: str, tag: str = "ки") -> Iterable[dict]:
    """Math-Shepherd rows ``{"input", "label"}``: ``input`` is the question then steps each ending
    with ``tag``; ``label`` is the same text with each tag replaced by ``+`` or ``-``."""
    for lineno, row in iter_jsonl(path):
        text = row.get("input") if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise DataFormatError(path, lineno, "input", "is missing or not a string")
        label = row.get("label")
        if isinstance(row.get("value"), list) or isinstance(label, list):
            raise DataFormatError(path, lineno, "label", "is a list: these look like ProcessRewardTrainer rows "
                                  "(input, value = step texts, label = '+'/'-' per step); use import_format: "
                                  "input_value_label")
        if not isinstance(label, str):
            raise DataFormatError(path, lineno, "label", "is missing or not a string")
        parts = text.split(tag)
        m = re.search(r"Step\s*1\s*:", parts[0])
        question = parts[0][: m.start()].strip() if m else ""
        steps = [p.strip() for p in ([parts[0][m.start():]] if m else [parts[0]]) + parts[1:-1]]
        signs, offset, shift = [], 0, len(tag) - 1
        for j in range(len(parts) - 1):
            offset += len(parts[j])
            signs.append(label[offset - j * shift] if offset - j * shift < len(label) else "?")
            offset += len(tag)
        if len(signs) != len(steps) or any(s not in ("+", "-") for s in signs):
            raise DataFormatError(path, lineno, "label", f"expected one '+' or '-' per step ({len(steps)}), got {signs!r:.80}")
        yield validate_row({"prompt": question, "completions": steps, "labels": [s == "+" for s in signs]},
                           STEPWISE, path, lineno)


SIGNS = {"+": True, "-": False}


def input_value_label_row(row: Any, path: str = "<rows>", lineno: int | None = None) -> dict:
    """One ProcessRewardTrainer row ``{"input": question, "value": [step, ...], "label": ["+", "-", ...]}``
    as a stepwise row (``+`` a correct step, ``-`` a wrong one)."""
    if not isinstance(row, dict):
        raise DataFormatError(path, lineno, None, f"expected a JSON object, got {type(row).__name__}")
    question, steps, signs = row.get("input"), row.get("value"), row.get("label")
    if not isinstance(question, str):
        raise DataFormatError(path, lineno, "input", "is missing or not a string (the question)")
    if not isinstance(steps, list) or not steps or not all(isinstance(x, str) for x in steps):
        raise DataFormatError(path, lineno, "value", "must be a non-empty list of step texts")
    if not isinstance(signs, list) or len(signs) != len(steps) or any(x not in SIGNS for x in signs):
        raise DataFormatError(path, lineno, "label", f"expected one '+' or '-' per step ({len(steps)}), "
                              f"got {signs!r:.80}")
    return validate_row({"prompt": question, "completions": list(steps), "labels": [SIGNS[x] for x in signs]},
                        STEPWISE, path, lineno)


def import_input_value_label(path: str) -> Iterable[dict]:
    """ProcessRewardTrainer rows (``input`` / ``value`` / ``label``; see :func:`input_value_label_row`)."""
    for lineno, row in iter_jsonl(path):
        yield input_value_label_row(row, path, lineno)


DREAMPRM_STEP_RE = re.compile(r"^[ \t]*#{2,4}\s*Step\s*(\d+)\s*[:.]?[ \t]*", re.IGNORECASE | re.MULTILINE)


def dreamprm_steps(text: str) -> list[str]:
    """The steps of a DreamPRM ``cot_response``: the text after each ``### Step N:`` marker, up to
    the next one (text before the first marker is not a step)."""
    marks = list(DREAMPRM_STEP_RE.finditer(text))
    return [text[m.end() : marks[k + 1].start() if k + 1 < len(marks) else len(text)].strip()
            for k, m in enumerate(marks)]


def import_dreamprm(path: str) -> Iterable[dict]:
    """DreamPRM rows ``{"cot_response": "### Step 1: ...\\n### Step 2: ...", "cot_steps": [{"pi": 0.8}, ...],
    "meta_label": 1.0, "informal_prefix", "formal_statement"}``: the steps come from the
    ``### Step N:`` markers, each step's soft label is its ``pi`` (clipped to [0, 1]), and
    ``meta_label`` is the outcome label of the whole solution (1.0: right), kept as the row's
    ``meta_label``: the label a meta set is judged by (``stages.prm_lib.reweight``). The prompt is
    ``informal_prefix`` and ``formal_statement`` (or ``question`` / ``prompt``).

    The flat form ``{"question", "steps", "pi": [...], "meta_label"}`` is read the same way."""
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataFormatError(path, lineno, None, "expected a JSON object")
        if "cot_response" in row:
            if not isinstance(row["cot_response"], str):
                raise DataFormatError(path, lineno, "cot_response", "is not a string")
            steps = dreamprm_steps(row["cot_response"])
            if not steps:
                raise DataFormatError(path, lineno, "cot_response", "has no '### Step N:' marker")
            cot = row.get("cot_steps")
            if not isinstance(cot, list) or not all(isinstance(c, dict) and "pi" in c for c in cot):
                raise DataFormatError(path, lineno, "cot_steps", 'must be a list of {"pi": score} objects')
            pi, field_name = [c["pi"] for c in cot], "cot_steps"
            prompt = "\n".join(row[k].strip() for k in ("informal_prefix", "formal_statement")
                               if isinstance(row.get(k), str) and row[k].strip())
            prompt = prompt or row.get("question") or row.get("prompt") or ""
        else:
            for f in ("steps", "pi"):
                if not isinstance(row.get(f), list):
                    raise DataFormatError(path, lineno, f, "is missing or not a list (DreamPRM rows have "
                                          "cot_response and cot_steps)")
            steps, pi, field_name = row["steps"], row["pi"], "pi"
            prompt = row.get("question") or row.get("prompt") or ""
        if len(pi) != len(steps):
            raise DataFormatError(path, lineno, field_name, f"has {len(pi)} scores for {len(steps)} steps")
        try:
            labels = [min(1.0, max(0.0, float(p))) for p in pi]
        except (TypeError, ValueError) as e:
            raise DataFormatError(path, lineno, field_name, f"has a score that is not a number ({e})") from e
        out: dict[str, Any] = {"prompt": prompt, "completions": steps, "labels": labels}
        meta = row.get("meta_label")
        if meta is not None:
            if isinstance(meta, bool) or not isinstance(meta, int | float) or not 0.0 <= float(meta) <= 1.0:
                raise DataFormatError(path, lineno, "meta_label", "must be the solution's outcome label in [0, 1], "
                                      f"got {meta!r}")
            out["meta_label"] = float(meta)
        for k in ("id", "domain"):
            if k in row:
                out[k] = row[k]
        yield validate_row(out, STEPWISE, path, lineno)


def import_text_label(path: str, label_map: dict[str, Any]) -> Iterable[dict]:
    """``{"text", "label"}`` step rows (with ``prompt`` or ``question``, and an optional
    ``solution_id``), consecutive rows of one solution grouped; ``label_map`` maps each raw label
    (as a string) to a stepwise label (bool, number in [0, 1] or class name)."""
    current: dict | None = None
    key: Any = None
    for lineno, row in iter_jsonl(path):
        for f in ("text", "label"):
            if f not in row:
                raise DataFormatError(path, lineno, f, "is missing")
        raw = str(row["label"])
        if raw not in label_map:
            raise DataFormatError(path, lineno, "label", f"{raw!r} is not in the label map {sorted(label_map)}")
        prompt = row.get("prompt", row.get("question", ""))
        k = (prompt, row.get("solution_id"))
        if current is None or k != key:
            if current is not None:
                yield validate_row(current, STEPWISE, path, lineno)
            current, key = {"prompt": prompt, "completions": [], "labels": []}, k
        current["completions"].append(row["text"])
        current["labels"].append(label_map[raw])
    if current is not None:
        yield validate_row(current, STEPWISE, path, None)


IMPORTERS: dict[str, Callable[..., Iterable[dict]]] = {
    "prm800k": import_prm800k,
    "math_shepherd": import_math_shepherd,
    "input_value_label": import_input_value_label,  # ProcessRewardTrainer
    "dreamprm": import_dreamprm,
    "pi_scores": import_dreamprm,  # DreamPRM's flat form, read the same way
    "text_label": import_text_label,
}


def solution_steps(completion: str) -> list[str]:
    return split_solution(completion)


def reference_completion(program: str) -> str:
    return format_completion(program)


# ---------------------------------------------------------------------------------------------
# Perturbed negatives


_OP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult,
             ast.Div: ast.Mult, ast.Mod: ast.FloorDiv}


def perturb_solution(steps: Sequence[str], rng) -> tuple[list[str], int] | None:
    """A copy of a solution's steps with one step made wrong (a number changed, an operator
    swapped or a variable replaced by another one in scope) and the index of that step; None when
    no step can be changed. Callers keep a copy only when it executes to a different answer: then
    every step from the changed one on is labelled wrong, the steps before it right (the first
    error is known without rollouts)."""
    candidates = []
    for i, step in enumerate(steps):
        try:
            tree = ast.parse(step)
        except SyntaxError:
            continue
        if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assign | ast.Expr | ast.Assert):
            continue
        stmt = tree.body[0]
        value = stmt.value if isinstance(stmt, ast.Assign | ast.Expr) else stmt.test
        nums = [n for n in ast.walk(value) if isinstance(n, ast.Constant) and type(n.value) is int]
        ops = [n for n in ast.walk(value) if isinstance(n, ast.BinOp) and type(n.op) in _OP_SWAPS]
        names = [n for n in ast.walk(value) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                 and n.id not in ("print", "int", "round", "abs")]
        if nums:
            candidates.append((i, "number", tree, nums))
        if ops:
            candidates.append((i, "operator", tree, ops))
        if names:
            candidates.append((i, "name", tree, names))
    if not candidates:
        return None
    i, kind, tree, nodes = candidates[rng.randrange(len(candidates))]
    node = nodes[rng.randrange(len(nodes))]
    if kind == "number":
        v = node.value
        node.value = max(0, v + rng.choice([-3, -2, -1, 1, 2, 3, 10])) if rng.random() < 0.6 else rng.randint(2, 99)
        if node.value == v:
            node.value = v + 1
    elif kind == "operator":
        node.op = _OP_SWAPS[type(node.op)]()
    else:
        scope = set()
        for earlier in steps[:i]:
            scope.update(re.findall(r"^([A-Za-z_]\w*)\s*=", earlier))
        scope.discard(node.id)
        if not scope:
            return None
        node.id = rng.choice(sorted(scope))
    out = list(steps)
    out[i] = ast.unparse(tree)
    return (out, i) if out[i] != steps[i] else None
