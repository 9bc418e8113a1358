"""LLM-as-a-judge evaluation (``arena-judge``): MT-bench questions, answers, judgments, results.

The leaderboard reads per-model MT-bench scores with :func:`mt_bench_scores`.
"""

from arena.judge.results import mt_bench_scores

__all__ = ["mt_bench_scores"]
