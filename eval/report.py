"""The run report: ``python -m eval.report runs/<run>`` writes ``report.html`` and ``report.md``
(with matplotlib PNGs in ``report_files/``) into the run folder.

It reads every complete checkpoint of the run (manifests), their ``metrics.json``, their eval
results (``<checkpoint>/eval/*/results.json``, see ``eval.results``) and trainer logs
(``log_history.json``), and shows:

- first, the run at a glance: each policy stage's greedy pass@1 on every eval set (the usual test
  split and the hard one) and its mean completion tokens, in one picture and one table;
- the eval sets, each named (usual, hard, GSM8K) and explained (``describe_set``);
- accuracy per stage on each eval set (greedy pass@1 with its 95% interval; pass@k, maj@k,
  PRM best-of-k and pass@1 after repair in the table when measured);
- mean completion length per stage;
- training curves (loss, reward terms, KL, completion length) from each trainer log;
- data yields (rows of every data artifact, and the yield figures a stage reports);
- PRM metrics (the numbers a ``prm`` checkpoint reports in [0, 1]);
- DPO: TRL's reward margins and accuracies over the steps of each ``dpo`` checkpoint, and its pairs
  per kind;
- the checkpoint lineage (stage, version, parent, config hash, times);
- links to each checkpoint's TensorBoard event files (``report_to: tensorboard``).

The HTML marks an image that failed to load (``img.broken``) and records every image's
``naturalWidth`` in ``<body data-images>`` once loaded, which the headless-browser test reads.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.results import read_results
from stages.common.arith import DEFAULT_LEVELS as USUAL_LEVELS
from stages.common.arith import parse_spec
from stages.common.checkpoint import TENSORBOARD_DIR, run_checkpoints
from stages.common.data import atomic_write_text

ASSETS = "report_files"
CURVE_KEYS = ("loss", "kl", "entropy", "completions/mean_length", "mean_token_accuracy")
MAX_CURVE_PANELS = 8


@dataclass
class Checkpoint:
    """One complete checkpoint of the run and everything the report reads from it."""

    path: Path
    manifest: dict
    metrics: dict = field(default_factory=dict)
    log_history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    data_rows: dict[str, int] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return str(self.manifest.get("stage"))

    @property
    def label(self) -> str:
        return f"{self.stage}/v{self.manifest.get('version')}"


def _arith_levels(source: str) -> tuple[int, ...] | None:
    """The levels of an ``arith:`` eval set (``stages.common.arith.parse_spec``); None for another
    source or a spec it cannot read."""
    kind, _, spec = source.partition(":")
    if kind != "arith":
        return None
    try:
        return parse_spec(spec)[3]
    except ValueError:
        return None


def set_name(source: str) -> str:
    """A short name for an eval set, for legends and table headers: ``usual``, ``hard``, ``GSM8K``
    or the source itself, with the source after it (``hard (arith:test:300:0:levels=4)``)."""
    levels = _arith_levels(source)
    if levels is not None:
        name = "hard" if min(levels) > max(USUAL_LEVELS) else "usual" if levels == USUAL_LEVELS else ""
        return f"{name} ({source})" if name else source
    if source.split(":", 1)[0] == "gsm8k":
        return f"GSM8K ({source})"
    return source


def describe_set(source: str) -> str:
    """What an eval set is and what to expect of it, one sentence for the report."""
    levels = _arith_levels(source)
    if levels is not None:
        ops = ", ".join(map(str, levels))
        if min(levels) > max(USUAL_LEVELS):
            return (f"the hard split: held-out problems of the embedded arithmetic task with {ops} operations, one "
                    f"more than the SFT data's bulk ({', '.join(map(str, USUAL_LEVELS))}); a policy solves them "
                    "only sometimes, so the stages after SFT have room to move it")
        return (f"the usual split: held-out problems of the embedded arithmetic task with {ops} operations, the "
                "levels of the SFT data; the policy is near its ceiling here, so this split shows what a stage "
                "costs rather than what it gains")
    if source.split(":", 1)[0] == "gsm8k":
        return ("GSM8K test problems (the real benchmark, lighteval); a model trained only on the embedded "
                "arithmetic task, like the default recipe's tiny model, is expected to score 0 here: this set "
                "checks the harness end to end, not the policy")
    return "an eval set from the recipe"


def sets_rows(acc: list[dict]) -> list[dict]:
    """One row per eval set of the run: its short name and what it is."""
    return [{"eval set": source, "name": set_name(source).split(" (")[0], "what it is": describe_set(source)}
            for source in dict.fromkeys(r["set"] for r in acc)]


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return default


def collect(run_dir: Path) -> list[Checkpoint]:
    """The run's complete checkpoints, oldest first, with their metrics, logs and evaluations."""
    out = []
    for m in run_checkpoints(run_dir):
        path = Path(m.pop("path"))
        logs = _read_json(path / "log_history.json", [])
        data_rows = {}
        for f in sorted(path.glob("*.jsonl")):
            with f.open(encoding="utf-8") as fh:
                data_rows[f.name] = sum(1 for line in fh if line.strip())
        out.append(Checkpoint(path, m, _read_json(path / "metrics.json", {}), logs if isinstance(logs, list) else [],
                              read_results(path), data_rows))
    return out


# ---------------------------------------------------------------------------------------------
# Tables


def accuracy_rows(ckpts: list[Checkpoint]) -> list[dict]:
    """One row per checkpoint, eval set and mode (newest evaluation of each wins); a checkpoint
    without eval results falls back to the pass@1 its stage measured itself (metrics.json)."""
    rows = []
    for c in ckpts:
        seen: dict[tuple[str, str], dict] = {}
        for r in c.evals:
            for source, modes in (r.get("sets") or {}).items():
                for mode, m in modes.items():
                    seen[(source, mode)] = {"checkpoint": c.label, "set": source, "mode": mode, "origin": "eval",
                                            **_flat_eval(m)}
        stage_evals = c.metrics.get("eval") if isinstance(c.metrics.get("eval"), dict) else {}
        for source, m in stage_evals.items():  # {eval set: metrics}, measured by the stage itself
            if isinstance(m, dict) and "pass@1" in m and (source, "pot") not in seen:
                seen[(source, "pot")] = {"checkpoint": c.label, "set": source, "mode": "pot",
                                         "origin": "metrics.json", **_flat_eval(m)}
        rows.extend(seen.values())
    return rows


def _flat_eval(m: dict) -> dict:
    out = {k: m[k] for k in ("n", "pass@1", "pass@1_ci95", "mean_completion_tokens") if k in m}
    for k, v in (m.get("sampled") or {}).items():
        if k.startswith(("pass@", "maj@", "prm_")):
            out[f"sampled {k}"] = v
    if isinstance(m.get("repair"), dict):
        out[f"pass@1 repair@{m['repair'].get('rounds')}"] = m["repair"].get("pass@1")
    if m.get("unreadable_gold"):  # problems left out of n: their gold answer cannot be read
        out["unreadable gold"] = m["unreadable_gold"]
    return out


def story_rows(acc: list[dict]) -> list[dict]:
    """The run in one table: one row per policy checkpoint (pipeline order), greedy PoT pass@1 and
    mean completion tokens on every eval set, and the change from the row before; the columns name each
    set by :func:`set_name` (usual, hard, GSM8K) and its source."""
    sets = list(dict.fromkeys(r["set"] for r in acc if r["mode"] == "pot" and "pass@1" in r))
    rows: list[dict] = []
    for label in dict.fromkeys(r["checkpoint"] for r in acc):
        found = {r["set"]: r for r in acc if r["checkpoint"] == label and r["mode"] == "pot" and "pass@1" in r}
        if not found:
            continue
        row: dict[str, Any] = {"checkpoint": label}
        for source in sets:
            r = found.get(source)
            row[f"pass@1 {set_name(source)}"] = r["pass@1"] if r else None
            row[f"tokens {set_name(source)}"] = r.get("mean_completion_tokens") if r else None
        rows.append(row)
    for before, after in zip(rows, rows[1:], strict=False):
        for name in map(set_name, sets):
            a, b = after[f"pass@1 {name}"], before[f"pass@1 {name}"]
            after[f"change {name}"] = (f"{100 * (a - b):+.1f} pts" if a is not None and b is not None else "")
    return rows


def _label_offset(row: dict, sets: list[str], k: int, close: float = 8.0) -> int:
    """The vertical offset, in points, of the pass@1 label of ``sets[k]`` in a story row: above the point,
    or below it when another set's value at the same stage is within ``close`` points above it (or equal
    and listed earlier), so that two labels never print over each other (both splits near 100%)."""
    y = 100 * row[f"pass@1 {sets[k]}"]
    for j, source in enumerate(sets):
        other = row[f"pass@1 {source}"]
        if j != k and other is not None and 0 <= 100 * other - y < close and (100 * other > y or j < k):
            return -12
    return 6


def plot_story(rows: list[dict], out: Path) -> bool:
    """pass@1 on each eval set (top) and mean completion tokens (bottom), stage by stage."""
    if not rows:
        return False
    sets = [k[len("pass@1 "):] for k in rows[0] if k.startswith("pass@1 ")]
    labels = [r["checkpoint"] for r in rows]
    plt = _plt()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 1.3 * len(labels) + 3), 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    for k, source in enumerate(sets):  # k: the set's index, for _label_offset
        pts = [(i, 100 * r[f"pass@1 {source}"]) for i, r in enumerate(rows) if r[f"pass@1 {source}"] is not None]
        line = top.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=source)[0]
        for x, y in pts:
            top.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, _label_offset(rows[x], sets, k)),
                         ha="center", fontsize=7, color=line.get_color())
        pts = [(i, r[f"tokens {source}"]) for i, r in enumerate(rows) if r[f"tokens {source}"] is not None]
        bottom.plot([p[0] for p in pts], [p[1] for p in pts], marker="s", label=source, color=line.get_color())
    top.set_ylabel("greedy pass@1 (%)")
    top.set_ylim(0, 108)
    top.set_title("The run, stage by stage", fontsize=11)
    top.set_xlim(-0.5, len(labels) - 0.5)
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_ylabel("mean completion tokens")
    bottom.grid(alpha=0.3)
    bottom.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def yield_rows(ckpts: list[Checkpoint]) -> list[dict]:
    """Data artifacts (rows per jsonl) and the yield-like figures each stage reports."""
    rows = []
    for c in ckpts:
        for name, n in c.data_rows.items():
            rows.append({"checkpoint": c.label, "what": name, "value": n})
        for key, v in _numeric_leaves(c.metrics):
            low = key.lower()
            if any(w in low for w in ("yield", "accepted", "verified", "kept", "_rows")) and "token" not in low:
                rows.append({"checkpoint": c.label, "what": key, "value": v})
    return rows


def prm_rows(ckpts: list[Checkpoint]) -> list[dict]:
    rows = []
    for c in ckpts:
        if c.stage != "prm":
            continue
        for key, v in _numeric_leaves(c.metrics):
            if 0.0 <= v <= 1.0 and not key.endswith(("_s", "seconds", "runtime")):
                rows.append({"checkpoint": c.label, "metric": key, "value": v})
    return rows


def lineage_rows(ckpts: list[Checkpoint]) -> list[dict]:
    rows = []
    for c in ckpts:
        parent = c.manifest.get("parent") or {}
        if parent.get("stage"):
            p = f"{parent['stage']}/v{parent.get('version')}"
        else:
            p = parent.get("spec") or parent.get("path") or "-"
        rows.append({"checkpoint": c.label, "parent": p, "config": str(c.manifest.get("config_sha256", ""))[:12],
                     "started": c.manifest.get("started_at", ""), "finished": c.manifest.get("finished_at", ""),
                     "path": str(c.path)})
    return rows


def _numeric_leaves(obj: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) for every finite number in a nested dict."""
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            out += _numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, int | float) and not isinstance(obj, bool) and math.isfinite(obj):
        return [(prefix, float(obj))]
    return []


# ---------------------------------------------------------------------------------------------
# Plots


def _plt():
    import matplotlib  # deferred: heavy import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: heavy import

    return plt


def plot_accuracy(rows: list[dict], out: Path) -> bool:
    series = sorted({(r["set"], r["mode"]) for r in rows if "pass@1" in r})
    labels = list(dict.fromkeys(r["checkpoint"] for r in rows))
    if not series or not labels:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels) + 3), 4))
    width = 0.8 / len(series)
    for j, (source, mode) in enumerate(series):
        xs, ys, err = [], [], [[], []]
        for i, label in enumerate(labels):
            r = next((r for r in rows if r["checkpoint"] == label and r["set"] == source and r["mode"] == mode), None)
            if r is None or "pass@1" not in r:
                continue
            p = 100 * r["pass@1"]
            lo, hi = (100 * v for v in r.get("pass@1_ci95", [r["pass@1"], r["pass@1"]]))
            xs.append(i + (j - (len(series) - 1) / 2) * width)
            ys.append(p)
            err[0].append(max(0.0, p - lo))
            err[1].append(max(0.0, hi - p))
        bars = ax.bar(xs, ys, width, yerr=err, capsize=3, label=f"{set_name(source)}, {mode}")
        ax.bar_label(bars, labels=[f"{y:.1f}" for y in ys], padding=2, fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel("greedy pass@1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy per stage (95% Wilson interval)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def plot_lengths(rows: list[dict], out: Path) -> bool:
    series = sorted({(r["set"], r["mode"]) for r in rows if "mean_completion_tokens" in r})
    labels = list(dict.fromkeys(r["checkpoint"] for r in rows))
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels) + 3), 3.5))
    for source, mode in series:
        pts = [(i, r["mean_completion_tokens"]) for i, label in enumerate(labels)
               for r in rows if r["checkpoint"] == label and r["set"] == source and r["mode"] == mode
               and "mean_completion_tokens" in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{set_name(source)}, {mode}")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel("mean completion tokens")
    ax.set_title("Completion length per stage (greedy)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def curve_keys(logs: list[dict]) -> list[str]:
    """The trainer-log series worth plotting: loss, reward terms, KL, lengths (>= 2 points)."""
    counts: dict[str, int] = {}
    for e in logs:
        for k, v in e.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and "step" in e:
                counts[k] = counts.get(k, 0) + 1
    keys = [k for k in counts if counts[k] >= 2 and (k in CURVE_KEYS or "reward" in k)]
    keys.sort(key=lambda k: (k != "loss", "reward" not in k, k))
    return keys[:MAX_CURVE_PANELS]


def plot_curves(c: Checkpoint, out: Path) -> bool:
    keys = curve_keys(c.log_history)
    if not keys:
        return False
    plt = _plt()
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        pts = [(e["step"], e[key]) for e in c.log_history if "step" in e and isinstance(e.get(key), int | float)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", lw=1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"Training curves: {c.label}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def plot_barh(rows: list[dict], label_keys: tuple[str, str], title: str, xlabel: str, out: Path) -> bool:
    return _save_panels([(rows, xlabel)] if rows else [], label_keys, title, out)


def plot_data(rows: list[dict], out: Path) -> bool:
    """Data artifacts and counts on one panel, yields and rates (fractions) on another."""
    fractions = [r for r in rows if "yield" in str(r["what"]).lower() or "rate" in str(r["what"]).lower()]
    counts = [r for r in rows if r not in fractions]
    panels = [(p, x) for p, x in ((counts, "rows"), (fractions, "fraction")) if p]
    return _save_panels(panels, ("checkpoint", "what"), "Data artifacts and yields", out)


def _save_panels(panels: list[tuple[list[dict], str]], label_keys: tuple[str, str], title: str, out: Path) -> bool:
    if not panels:
        return False
    plt = _plt()
    n = max(len(rows) for rows, _ in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 2, 0.35 * n + 1.5), squeeze=False)
    for ax, (rows, xlabel) in zip(axes.flat, panels, strict=True):
        ax.barh(range(len(rows)), [r["value"] for r in rows], color="tab:green")
        ax.set_yticks(range(len(rows)), [f"{r[label_keys[0]]}: {r[label_keys[1]]}" for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def plot_lineage(rows: list[dict], out: Path) -> bool:
    if not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.8 * len(rows) + 1))
    index = {r["checkpoint"]: i for i, r in enumerate(rows)}
    for i, r in enumerate(rows):
        ax.text(0.3, -i, r["checkpoint"], ha="center", va="center", fontsize=10,
                bbox={"boxstyle": "round", "facecolor": "#dbe9f6", "edgecolor": "#3a6ea5"})
        ax.text(0.55, -i, f"config {r['config']}  {r['finished']}", ha="left", va="center", fontsize=8)
        p = index.get(r["parent"])
        if p is not None and i - p == 1:
            ax.annotate("", xy=(0.3, -i + 0.25), xytext=(0.3, -p - 0.25),
                        arrowprops={"arrowstyle": "->", "color": "#3a6ea5"})
        elif p is not None:  # a parent further up: a curved arrow on the left, clear of the boxes between
            ax.annotate("", xy=(0.24, -i), xytext=(0.24, -p),
                        arrowprops={"arrowstyle": "->", "color": "#a55a3a", "connectionstyle": "arc3,rad=0.4"})
        else:
            ax.text(0.02, -i, "root" if r["parent"] == "-" else f"from {r['parent']}", ha="left", va="center",
                    fontsize=7, color="gray")
    ax.set_xlim(0, 1.2)
    ax.set_ylim(-len(rows) + 0.4, 0.6)
    ax.axis("off")
    ax.set_title("Checkpoint lineage (parent -> child)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def evolve_section(ckpts: list[Checkpoint], assets: Path) -> tuple[str, list[str], list[dict], str]:
    """The evolve panel: per checkpoint and round, yield, coverage (best-of-N alone and with the
    tree), tree exploration against plain best-of-N at the same generated tokens, generation speed
    and the sandbox + PRM share of the sampling and of the whole stage; and the PRM score histograms
    of kept and discarded solutions."""
    rows, hists = [], []
    for c in ckpts:
        if c.stage != "evolve":
            continue
        for i, m in enumerate(c.metrics.get("rounds") or [], start=1):
            tree = m.get("tree_vs_best_of_n") or {}
            rows.append({"checkpoint": c.label, "round": i, "problems": m.get("problems"), "kept": m.get("kept"),
                         "yield": m.get("yield"), "coverage": m.get("coverage"),
                         "coverage best-of-N": m.get("coverage_best_of_n"),
                         "added by tree": m.get("coverage_added_by_tree"),
                         "tree solved / tokens": f"{tree.get('tree_solved')} / {tree.get('tree_tokens')}" if tree else "-",
                         "best-of-N solved / tokens (same budget)":
                             f"{tree.get('best_of_n_solved')} / {tree.get('best_of_n_tokens')}" if tree else "-",
                         "tokens/s": m.get("generated_tokens_per_s"),
                         "sandbox+PRM share of sampling": m.get("scoring_share_of_sampling"),
                         # the stage's build (sampling and fine-tuning, every round): #15's "of the stage's time"
                         "sandbox+PRM share of the stage": c.metrics.get("scoring_share_of_build"),
                         "failed": m.get("problems_failed")})
            if isinstance(m.get("prm_histogram"), dict):
                hists.append((f"{c.label} round {i}", m["prm_histogram"]))
    images = []
    if hists:
        plt = _plt()
        fig, axes = plt.subplots(1, len(hists), figsize=(4.5 * len(hists), 3.2), squeeze=False)
        for ax, (label, h) in zip(axes.flat, hists, strict=True):
            edges = h.get("bins") or []
            centers = [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
            width = 0.4 / max(1, len(centers))
            ax.bar([x - width / 2 for x in centers], h.get("kept") or [], width, label="kept")
            ax.bar([x + width / 2 for x in centers], h.get("discarded") or [], width, label="discarded")
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("aggregated PRM score", fontsize=8)
            ax.legend(fontsize=7)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle("Evolve: PRM scores of kept and discarded solutions")
        fig.tight_layout()
        fig.savefig(assets / "evolve.png", dpi=100)
        plt.close(fig)
        images.append(f"{ASSETS}/evolve.png")
    return "Evolve: self-evolution", images, rows, "no evolve checkpoint in this run"


# ---------------------------------------------------------------------------------------------
# HTML and Markdown


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list) and v and all(isinstance(x, int | float) for x in v):
        return "[" + ", ".join(f"{float(x):.3f}" for x in v) + "]"
    return str(v)


def _columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def html_table(rows: list[dict]) -> str:
    cols = _columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def md_table(rows: list[dict]) -> str:
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def dpo_section(ckpts: list[Checkpoint], assets: Path) -> tuple[str, list[str], list[dict], str]:
    """The dpo stage's panel: TRL's reward margins and reward accuracies over the training steps of
    each dpo checkpoint (``log_history.json``), and a table of its pairs per kind with the first
    and last logged margin and accuracy."""
    title, note = "DPO preference pairs", "no dpo checkpoint in this run"
    dpo = [c for c in ckpts if c.stage == "dpo"]
    rows: list[dict] = []
    for c in dpo:
        pairs = c.metrics.get("pairs", {})
        logged = c.metrics.get("dpo", {})
        row: dict[str, Any] = {"checkpoint": c.label, "pairs": pairs.get("total")}
        row.update({f"pairs {kind}": n for kind, n in pairs.get("trained", {}).items()})
        row.update({"chosen tokens": pairs.get("mean_chosen_tokens"), "rejected tokens": pairs.get("mean_rejected_tokens")})
        for when in ("first", "last"):
            for key in ("rewards/margins", "rewards/accuracies"):
                row[f"{key.split('/')[1]} ({when})"] = logged.get(when, {}).get(key)
        rows.append(row)
    series = [(c, [e for e in c.log_history if "step" in e and "rewards/margins" in e]) for c in dpo]
    series = [(c, logs) for c, logs in series if logs]
    if not series:
        return title, [], rows, note
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for c, logs in series:
        steps = [e["step"] for e in logs]
        axes[0].plot(steps, [e["rewards/margins"] for e in logs], marker=".", lw=1, label=c.label)
        axes[1].plot(steps, [e.get("rewards/accuracies") for e in logs], marker=".", lw=1, label=c.label)
    for ax, what in zip(axes, ("reward margin (chosen - rejected)", "reward accuracy (chosen > rejected)"),
                        strict=True):
        ax.set_title(what, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[1].set_ylim(0, 1.05)
    fig.suptitle("DPO: implicit rewards of chosen against rejected")
    fig.tight_layout()
    fig.savefig(assets / "dpo.png", dpi=100)
    plt.close(fig)
    return title, [f"{ASSETS}/dpo.png"], rows, note


_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  imgs.forEach(function (i) { if (!i.complete || i.naturalWidth === 0) { i.classList.add('broken'); } });
  document.body.setAttribute('data-images', JSON.stringify(imgs.map(function (i) {
    return {src: i.getAttribute('src'), naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight};
  })));
});
</script>"""
_STYLE = """<style>
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; }
img { max-width: 100%; border: 1px solid #eee; }
img.broken { outline: 4px solid red; }
.note { color: #777; font-style: italic; }
</style>"""


def build(run_dir: Path) -> tuple[Path, Path]:
    """Write report.html, report.md and the PNGs; return the two report paths."""
    run_dir = Path(run_dir)
    ckpts = collect(run_dir)
    assets = run_dir / ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    for old in assets.glob("*.png"):
        old.unlink()
    acc, yields, prm, lin = accuracy_rows(ckpts), yield_rows(ckpts), prm_rows(ckpts), lineage_rows(ckpts)

    sections: list[tuple[str, list[str], list[dict], str]] = []  # title, images, table rows, note

    def img(name: str, ok: bool) -> list[str]:
        return [f"{ASSETS}/{name}"] if ok else []

    story = story_rows(acc)
    sections.append(("The run at a glance", img("story.png", plot_story(story, assets / "story.png")), story,
                     "no policy checkpoint with an evaluation yet"))
    sections.append(("Eval sets", [], sets_rows(acc), "no evaluation results yet"))
    sections.append(("Accuracy per stage", img("accuracy.png", plot_accuracy(acc, assets / "accuracy.png")), acc,
                     "no evaluation results yet (python -m eval.gsm8k --model <checkpoint>)"))
    sections.append(("Completion length per stage", img("length.png", plot_lengths(acc, assets / "length.png")),
                     [], "no evaluation results yet"))
    curves = []
    for c in ckpts:
        name = f"curves_{c.stage}_v{c.manifest.get('version')}.png"
        curves += img(name, plot_curves(c, assets / name))
    sections.append(("Training curves", curves, [], "no trainer logs (log_history.json) in this run"))
    sections.append(("Data yields", img("data.png", plot_data(yields, assets / "data.png")), yields,
                     "no data artifacts in this run"))
    sections.append(("PRM metrics", img("prm.png", plot_barh(prm, ("checkpoint", "metric"), "PRM metrics", "value",
                                                           assets / "prm.png")), prm,
                     "no PRM checkpoint in this run"))
    sections.append(evolve_section(ckpts, assets))
    sections.append(("Pass@1 with repair", [], repair_rows(ckpts),
                     "no evaluation with repair (python -m eval.gsm8k --model <checkpoint> --repair --prm <prm>)"))
    sections.append(dpo_section(ckpts, assets))
    sections.append(("Checkpoint lineage", img("lineage.png", plot_lineage(lin, assets / "lineage.png")), lin,
                     "no complete checkpoint in this run"))

    title = f"mathforge run report: {run_dir.name}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}"
             f"</head><body><h1>{html.escape(title)}</h1><p>{len(ckpts)} checkpoint(s) in "
             f"<code>{html.escape(str(run_dir))}</code></p>"]
    md = [f"# {title}", "", f"{len(ckpts)} checkpoint(s) in `{run_dir}`", ""]
    for name, images, rows, note in sections:
        parts.append(f"<h2>{html.escape(name)}</h2>")
        md += [f"## {name}", ""]
        if not images and not rows:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
            md += [f"_{note}_", ""]
            continue
        for src in images:
            parts.append(f"<p><img src='{html.escape(src)}' alt='{html.escape(name)}'></p>")
            md += [f"![{name}]({src})", ""]
        if rows:
            parts.append(html_table(rows))
            md += [md_table(rows), ""]
    tracking_html, tracking_md = tracking_section(ckpts, run_dir)
    parts.append(tracking_html)
    md += tracking_md
    parts.append(_SCRIPT + "</body></html>")
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    atomic_write_text(html_path, "\n".join(parts))
    atomic_write_text(md_path, "\n".join(md))
    return html_path, md_path


def tracking_section(ckpts: list[Checkpoint], run_dir: Path) -> tuple[str, list[str]]:
    """Links to each checkpoint's TensorBoard event files (``<checkpoint>/tensorboard/``, written
    with ``report_to: tensorboard``) and the command that shows them all; HTML and markdown."""
    found = []
    for c in ckpts:
        events = sorted((c.path / TENSORBOARD_DIR).rglob("events.out.tfevents.*"))
        if events:
            try:
                where = (c.path / TENSORBOARD_DIR).resolve().relative_to(run_dir.resolve())
            except ValueError:
                where = (c.path / TENSORBOARD_DIR).resolve()
            found.append((c.label, where, len(events)))
    title = "Tracking (TensorBoard)"
    if not found:
        note = "no TensorBoard event files (report_to: tensorboard in a stage's recipe writes them)"
        return (f"<h2>{title}</h2><p class='note'>{html.escape(note)}</p>", [f"## {title}", "", f"_{note}_", ""])
    command = f"tensorboard --logdir {run_dir}"
    items = "".join(f"<li>{html.escape(label)}: <a href='{html.escape(str(where))}/'>{html.escape(str(where))}</a> "
                    f"({n} event file(s))</li>" for label, where, n in found)
    md = [f"## {title}", "", f"`{command}`", ""] + [f"- {label}: [{where}]({where}/) ({n} event file(s))"
                                                   for label, where, n in found] + [""]
    return f"<h2>{title}</h2><p><code>{html.escape(command)}</code></p><ul>{items}</ul>", md
def repair_rows(ckpts: list[Checkpoint]) -> list[dict]:
    """pass@1 with repair per checkpoint and eval set (``eval.gsm8k --repair``; newest evaluation
    wins): plain pass@1 beside pass@1 with repair, what the loop attempted, fixed and broke, its
    extra tokens per problem, and best-of-(1+R) by the same verifier (all R samples, and at the
    repair's token budget) for comparison."""
    rows = []
    for c in ckpts:
        seen: dict[str, dict] = {}
        for r in c.evals:
            for source, modes in (r.get("sets") or {}).items():
                m = (modes.get("pot") or {}).get("repair")
                if not isinstance(m, dict) or "attempted" not in m:
                    continue
                row = {"checkpoint": c.label, "set": source, "verifier": m.get("verifier"),
                       "rounds": m.get("rounds"), "pass@1": m.get("pass@1_before"), "pass@1 repair": m.get("pass@1"),
                       "attempted": m.get("attempted"), "fixed": m.get("fixed"), "broken": m.get("broken"),
                       "extra tokens/problem": m.get("extra_tokens_per_problem")}
                for name, label in (("best_of", "best-of-(1+R)"), ("best_of_same_budget", "best-of same budget")):
                    if isinstance(m.get(name), dict):
                        row[label] = m[name].get("pass@1")
                        row[f"{label} tokens"] = m[name].get("extra_tokens_per_problem")
                seen[source] = row
        rows.extend(seen.values())
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eval.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder, e.g. runs/tiny")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"eval.report: '{run_dir}' is not a folder", file=sys.stderr)
        return 2
    html_path, md_path = build(run_dir)
    print(f"[report] wrote {html_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
