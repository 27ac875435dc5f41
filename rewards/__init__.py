"""Rewards: final-answer extraction and equivalence (the rules: docs/answers.md), PoT/CoT
correctness, brevity and length shapes, PRM bonus and format checks, all usable as TRL reward
functions (``rewards.registry``).

Every stage that scores solutions goes through this package; nothing re-implements it.
"""

from rewards.equivalence import Gold, is_equivalent, is_parseable_gold, read_gold
from rewards.extract import extract_answer, gold_answer
from rewards.numeric import normalize_number, parse_number
from rewards.scoring import ExecMemo, PotScore, score_cot, score_pot

__all__ = [
    "ExecMemo",
    "Gold",
    "PotScore",
    "extract_answer",
    "gold_answer",
    "is_equivalent",
    "is_parseable_gold",
    "normalize_number",
    "parse_number",
    "read_gold",
    "score_cot",
    "score_pot",
]
