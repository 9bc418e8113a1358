"""Anomalous-voter detection in simulation: injected adversaries among honest visitors.

Honest visitors vote by Bradley-Terry (10% ties); adversaries are ``underdog`` (always the weaker
model), ``random`` (a coin flip) or ``promoter`` (always one weak target model). Per-vote p-values
under the fitted model are combined per visitor with Fisher's method and flagged at alpha = 0.01.
Reports detection and false-positive rates by adversary kind and votes per visitor.
Goal: >= 90% caught at <= 1% false positives. Writes benchmarks/results/anomalies.json.

    .venv/bin/python benchmarks/anomalies.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from arena.ranking.anomalies import ADVERSARY_KINDS, detection_rates, simulate_voters  # noqa: E402
from arena.ranking.simulate import true_ratings  # noqa: E402
from benchmarks.common import write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=30)
    parser.add_argument("--honest", type=int, default=3000)
    parser.add_argument("--adversaries", type=int, default=60, help="per run (2%% of visitors)")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "anomalies.json"))
    args = parser.parse_args()
    rows = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        truth = true_ratings(args.models, rng, spread=150.0)
        for kind in ADVERSARY_KINDS:
            for votes_each in (10, 20, 40):
                votes = simulate_voters(truth, args.honest, args.adversaries, votes_each, kind, rng)
                rows.append({"seed": seed, "kind": kind, "votes_per_visitor": votes_each,
                             **detection_rates(votes, args.alpha)})
    table = pd.DataFrame(rows).groupby(["kind", "votes_per_visitor"])[
        ["detection_rate", "false_positive_rate"]].mean().reset_index()
    print(table.round(3).to_string(index=False))
    payload = {
        "benchmark": "anomalies",
        "setup": vars(args),
        "summary": table.to_dict(orient="records"),
        "runs": rows,
    }
    path = write_result("anomalies", payload, packages=("numpy", "pandas"), path=Path(args.output))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
