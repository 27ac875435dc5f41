"""Benchmark: scoring 8-step solutions with one token-classification pass (this stage's PRM)
against one sequence-classification pass per step prefix (the seed's design), same backbone size,
same run, same inputs. Prints both timings and the speed-up ratio (target >= 5x), and the implicit
PRM's cost (``prm_type: implicit``: one pass of the causal LM and one of its reference per solution,
as ``PRMScorer`` runs them when the solutions share no prompt), reported without a target.

    .venv/bin/python bench/prm_scoring.py [--quick] [--solutions 32] [--repeats 3] [--hidden 128 --layers 4]
        [--check] [--json PATH]

``--quick``: 2 repeats instead of 3.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Figure, finish, parser  # noqa: E402

TARGET = 5.0


def main() -> int:
    import torch  # deferred: heavy (the imports below load the project's model code)
    from transformers import (
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen2ForSequenceClassification,
        Qwen2ForTokenClassification,
    )

    from stages.common.arith import generate_problems
    from stages.common.steps import split_solution
    from stages.common.tiny import build_tokenizer
    from stages.prm_lib.implicit import ImplicitHead
    from stages.prm_lib.model import EncodingConfig, completion_start, encode_solution, prefix_sequences
    from stages.prm_lib.scorer import collate_ids

    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--solutions", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.quick:
        a.repeats = min(a.repeats, 2)
    torch.set_num_threads(a.threads)
    problems = [p for p in generate_problems(2000, split="train", seed=0)
                if len(split_solution("```python\n" + p["program"] + "\n```")) == 8][: a.solutions]
    if len(problems) < a.solutions:
        raise SystemExit(f"only {len(problems)} 8-step problems found")
    tok = build_tokenizer([p["question"] + "\n" + p["program"] for p in problems])
    tok.pad_token = tok.pad_token or tok.eos_token
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=3 * a.hidden, max_position_embeddings=1024,
                      num_labels=2, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    tc = Qwen2ForTokenClassification(cfg).eval()
    sc = Qwen2ForSequenceClassification(cfg).eval()
    lm, ref = Qwen2ForCausalLM(cfg).eval(), Qwen2ForCausalLM(cfg).eval()
    head = ImplicitHead(ref, 1.0)
    enc = EncodingConfig(chat_template=False)
    steps = [split_solution("```python\n" + p["program"] + "\n```") for p in problems]
    full = [encode_solution(tok, p["question"], s, enc, truncate=False) for p, s in zip(problems, steps, strict=True)]
    prefixes = [seq for ids, pos in full for seq in prefix_sequences(ids, pos)]  # the stage's own inputs
    pad = tok.pad_token_id

    def one_pass() -> None:
        ids, mask = collate_ids([ids for ids, _ in full], pad)
        tc(input_ids=ids, attention_mask=mask)

    starts = torch.tensor([completion_start(tok, p["question"], enc) for p in problems])

    def implicit() -> None:
        ids, mask = collate_ids([ids for ids, _ in full], pad)
        head.score_logits(lm, {"input_ids": ids, "attention_mask": mask, "completion_start": starts})

    def per_prefix() -> None:
        for start in range(0, len(prefixes), len(full)):  # same batch size, 8x the sequences
            ids, mask = collate_ids(prefixes[start : start + len(full)], pad)
            sc(input_ids=ids, attention_mask=mask)

    def timed(fn) -> float:
        runs = []
        with torch.inference_mode():
            fn()  # warm-up
            for _ in range(a.repeats):
                t = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t)
        return statistics.median(runs)

    t_tc, t_sc, t_im = timed(one_pass), timed(per_prefix), timed(implicit)
    n_params = sum(p.numel() for p in tc.parameters())
    print(f"{len(full)} solutions x 8 steps, backbone {a.layers} layers x {a.hidden} hidden ({n_params / 1e6:.2f}M "
          f"params), {a.threads} thread(s), median of {a.repeats}")
    print(f"token classification, one pass per solution:  {t_tc * 1000:8.1f} ms")
    print(f"sequence classification, one pass per prefix: {t_sc * 1000:8.1f} ms")
    print(f"speed-up: {t_sc / t_tc:.1f}x (target >= {TARGET:g}x)")
    print(f"implicit PRM, causal LM + reference pass:     {t_im * 1000:8.1f} ms ({t_sc / t_im:.1f}x faster than "
          "per prefix)")
    n = len(full)
    figures = [
        Figure("token classification vs one pass per prefix", n / t_tc, "solutions/s", n / t_sc, "one pass per prefix",
               target=TARGET),
        Figure("implicit PRM vs one pass per prefix", n / t_im, "solutions/s", n / t_sc, "one pass per prefix"),
    ]
    details = {"solutions": n, "steps": 8, "layers": a.layers, "hidden": a.hidden, "params": n_params,
               "threads": a.threads, "repeats": a.repeats, "token_classification_ms": t_tc * 1000,
               "per_prefix_ms": t_sc * 1000, "implicit_ms": t_im * 1000}
    return finish(a, "prm_scoring", figures, details)


if __name__ == "__main__":
    sys.exit(main())
