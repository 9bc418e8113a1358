"""arena-judge: MT-bench with an LLM as the judge (answers, judgments, results, agreement).

Single-mode scores are stored in the arena database (``mt_bench_scores``) for the leaderboard page.
"""
