"""Evaluation: lighteval tasks for GSM8K-style problems as executed Program-of-Thought and as
lighteval's standard chain-of-thought (``eval.tasks``, ``eval.metrics``), the runner
(``python -m eval.gsm8k``), pass@k / majority / PRM best-of-k (``eval.passk``), the repair and PRM
hooks (``eval.hooks``), lighteval's offline fixes (``eval.offline``), result folders
(``eval.results``) and the run report (``python -m eval.report``). See docs/eval.md.
"""
