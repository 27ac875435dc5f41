"""Rewards: final-answer extraction and equivalence, PoT/CoT correctness, brevity and length
shapes, PRM bonus and format checks, all usable as TRL reward functions (``rewards.registry``).

Every stage that scores solutions goes through this package; nothing re-implements it.
"""

from rewards.equivalence import is_equivalent, is_parseable_gold
from rewards.extract import extract_answer, gold_answer
from rewards.numeric import normalize_number, parse_number
from rewards.scoring import ExecMemo, PotScore, score_cot, score_pot

__all__ = [
    "ExecMemo",
    "PotScore",
    "extract_answer",
    "gold_answer",
    "is_equivalent",
    "is_parseable_gold",
    "normalize_number",
    "parse_number",
    "score_cot",
    "score_pot",
]
