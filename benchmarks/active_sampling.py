"""Active pair sampling vs uniform: votes needed for the same confidence-interval width.

Simulates the arena with known true ratings (normal, sd 200 points) and collects votes under the
uniform policy, the paper's win-rate rule and our rating-interval rule ("active", the arena's
setting). Reports the votes each policy needs to bring the widest and the mean 95% rating interval
down to what uniform sampling reaches with the full budget, averaged over several seeds (a policy
that never gets there within the budget counts as not reaching it; its saving is left out).
Goal: >= 30% fewer votes than uniform. Writes benchmarks/results/active_sampling.json.

    .venv/bin/python benchmarks/active_sampling.py [--models 30 --votes 40000 --seeds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from arena.ranking.sampling import simulate_policy, votes_to_reach  # noqa: E402
from arena.ranking.simulate import true_ratings  # noqa: E402
from benchmarks.common import write_result  # noqa: E402

POLICIES = ("uniform", "paper", "active")


def run(models: int, votes: int, seeds: int, spread: float, batch: int) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        truth = true_ratings(models, np.random.default_rng(1000 + seed), spread)
        curves = {
            policy: simulate_policy(truth, policy, votes, np.random.default_rng(seed), batch=batch,
                                    report_every=votes // 20)
            for policy in POLICIES
        }
        for column in ("max_ci_width", "mean_ci_width"):
            target = curves["uniform"][column].iloc[-1]
            for policy in POLICIES:
                needed = votes_to_reach(curves[policy], target, column)
                reached = bool(np.isfinite(needed))
                rows.append({"seed": seed, "metric": column, "policy": policy, "target_width": target,
                             "reached": reached, "votes_needed": needed if reached else None,
                             "saving_vs_uniform": 1.0 - needed / votes if reached else None})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=30)
    parser.add_argument("--votes", type=int, default=40_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--spread", type=float, default=200.0)
    parser.add_argument("--batch", type=int, default=200, help="votes between re-plans")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "active_sampling.json"))
    args = parser.parse_args()
    rows = run(args.models, args.votes, args.seeds, args.spread, args.batch)
    summary = rows.groupby(["metric", "policy"], sort=False).agg(
        runs_reaching_target=("reached", "sum"), runs=("reached", "size"),
        votes_needed=("votes_needed", "mean"), saving_vs_uniform=("saving_vs_uniform", "mean"))
    print(summary.round(3).to_string())
    payload = {
        "benchmark": "active_sampling",
        "setup": vars(args),
        "summary": summary.reset_index().to_dict(orient="records"),
        "runs": rows.astype(object).where(rows.notna(), None).to_dict(orient="records"),
    }
    path = write_result("active_sampling", payload, packages=("numpy", "pandas"), path=Path(args.output))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
