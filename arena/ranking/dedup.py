"""Prompt de-duplication as lmarena does it before fitting.

A handful of prompts ("hi", "test", the same riddle) are asked thousands of times and would
otherwise dominate the ratings. Count the battles per prompt; the prompts whose count lies above
the 99.9th percentile of those counts (the top 0.1%) are down-sampled to that percentile's count.
lmarena reports removing about 8.6% of its votes this way.

Which battles of a repeated prompt stay is decided by a hash of the battle id, so the choice is
random-looking but the same on every run (a refresh does not reshuffle the leaderboard).

The top 0.1% of fewer than 1,000 distinct prompts is less than one prompt, so below that nothing
is down-sampled (a small arena would otherwise always lose votes of its most asked prompt).
"""

from __future__ import annotations

import hashlib
import math

import pandas as pd

DEDUP_QUANTILE = 0.999
MIN_DISTINCT_PROMPTS = 1000


def prompt_hash(text: str) -> str:
    """What identifies a prompt for de-duplication: its text with surrounding whitespace removed."""
    return hashlib.sha256(text.strip().encode()).hexdigest()[:32]


def downsampled_battles(prompt_of_battle: pd.Series, quantile: float = DEDUP_QUANTILE,
                        min_prompts: int = MIN_DISTINCT_PROMPTS) -> set[str]:
    """The battle ids to leave out: ``prompt_of_battle`` maps battle id (index) to prompt hash."""
    prompts = prompt_of_battle.dropna()
    counts = prompts.value_counts()
    if len(counts) < min_prompts:
        return set()
    keep = max(1, math.floor(float(counts.quantile(quantile))))
    repeated = counts.index[counts > keep]
    if repeated.empty:
        return set()
    frame = prompts[prompts.isin(repeated)].rename("prompt").to_frame()
    frame["order"] = [hashlib.sha256(str(battle).encode()).hexdigest() for battle in frame.index]
    frame = frame.sort_values(["prompt", "order"])
    rank = frame.groupby("prompt").cumcount()
    return {str(battle) for battle in frame.index[(rank >= keep).to_numpy()]}
