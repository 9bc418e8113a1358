"""Gateway simulation: cost-aware caching and model multiplexing (arXiv 2306.02003) on our own query stream.

Claim (issue 16): cost-aware replacement (GDSF, least expected cost) beats LRU/LFU; cache + router beats
either alone; and the combination saves >= 4x FLOPs at a quality loss under 2% on held-out labels.

What is simulated, and what is real:

* **Queries** are real prompts from ``../shared/data`` (MT-bench, GSM8K, HumanEval, MMLU, CodeAlpaca, GPTeacher);
  their **FLOPs** are 2 x parameters x tokens (a 7B small and a 70B large model: the paper's ratio of 10), with
  tokens from each prompt and its reference answer.
* **Labels** are synthetic, since the platform has no votes between two real models here: each model answers a
  query correctly with the 2-parameter IRT probability ``sigmoid(a (ability - difficulty))``; the difficulty comes
  from the query's source and a real attribute (GSM8K solution steps, HumanEval solution length, MMLU subject
  group, answer length) plus hidden per-query noise the router can't see. Quality = share of correct answers.
* **The router** is ours (``serving.gateway.router``: MiniLM embeddings + logistic regression, threshold
  calibrated for a target quality), trained on one split of the queries; the stream only asks held-out ones.
* **The cache** is ours (``serving.gateway.cache.MemoryCache``), every policy, with entry limits.
* **Traffic**: each request picks a source by the traffic mix, then a query of it by Zipf popularity.

Run: ``python benchmarks/gateway.py`` (full, ~10 min on 2 CPU cores) or ``--quick`` (~2 min).
Writes ``benchmarks/results/gateway_cpu.json`` (``gateway_quick_cpu.json`` for --quick).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, write_result  # noqa: E402
from serving.gateway.cache import CachedAnswer, CacheLimits, MemoryCache  # noqa: E402
from serving.gateway.policies import Policy  # noqa: E402
from serving.gateway.router import Router  # noqa: E402
from tests.environment import SHARED_DATA  # noqa: E402

logger = logging.getLogger("benchmarks.gateway")
DATA = SHARED_DATA
SMALL_PARAMS, LARGE_PARAMS = 7e9, 70e9
ABILITY = {"small": 0.0, "large": 1.5}
DISCRIMINATION = 1.7
HIDDEN_NOISE = 0.7  # sd of the per-query difficulty that no text feature reveals
MIXES = {  # share of traffic per source
    "chat": {"codealpaca": 0.25, "gpteacher": 0.2, "mtbench": 0.1, "mmlu": 0.2, "gsm8k": 0.15, "humaneval": 0.1},
    "hard": {"codealpaca": 0.05, "gpteacher": 0.05, "mtbench": 0.05, "mmlu": 0.3, "gsm8k": 0.3, "humaneval": 0.25},
}
HARD_MTBENCH = {"math", "reasoning", "coding"}
MMLU_GROUP_DIFFICULTY = {"STEM": 0.6, "humanities": 0.0, "social sciences": -0.3}


@dataclass
class Query:
    source: str
    text: str
    difficulty: float  # before the hidden noise
    output_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return int(len(self.text.split()) * 1.3) + 8


# ----- the query pool --------------------------------------------------------------------------


def _zscore(values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return (array - array.mean()) / (array.std() or 1.0)


def load_queries(per_source: int, rng: np.random.Generator) -> list[Query]:
    """Real prompts with a difficulty from their source and one real attribute (see the module docstring)."""
    queries: list[Query] = []
    for line in (DATA / "mt_bench" / "question.jsonl").read_text().splitlines():
        item = json.loads(line)
        hard = item["category"] in HARD_MTBENCH
        queries.append(Query("mtbench", item["turns"][0], 1.0 if hard else -1.0, 350))
    gsm = [json.loads(line) for line in (DATA / "decontam/benchmarks/gsm8k/test.jsonl").read_text().splitlines()]
    steps = [item["answer"].count("\n") for item in gsm]
    queries += [Query("gsm8k", item["question"], 0.8 + 0.3 * (s - 3), int(len(item["answer"].split()) * 1.3))
                for item, s in zip(gsm, steps, strict=True)]
    with gzip.open(DATA / "decontam/benchmarks/humaneval/HumanEval.jsonl.gz", "rt") as handle:
        human = [json.loads(line) for line in handle]
    lines = _zscore([item["canonical_solution"].count("\n") for item in human])
    queries += [Query("humaneval", item["prompt"], 1.0 + 0.4 * z, int(len(item["canonical_solution"].split()) * 2))
                for item, z in zip(human, lines, strict=True)]
    queries += _mmlu(per_source, rng)
    for source, path, answer_field in (
        ("codealpaca", "decontam/corpora/codealpaca/code_alpaca_2k.json", "output"),
        ("gpteacher", "decontam/corpora/gpteacher-codegen/codegen-instruct.json", "response"),
    ):
        items = json.loads((DATA / path).read_text())
        lengths = _zscore([len(item[answer_field].split()) for item in items])
        base = -1.5 if source == "codealpaca" else -0.8
        queries += [Query(source, (item["instruction"] + "\n" + item.get("input", "")).strip(), base + 0.5 * z,
                          int(len(item[answer_field].split()) * 1.3) + 10)
                    for item, z in zip(items, lengths, strict=True)]
    by_source: dict[str, list[Query]] = {}
    for query in queries:
        by_source.setdefault(query.source, []).append(query)
    chosen: list[Query] = []
    for items in by_source.values():
        picks = rng.permutation(len(items))[:per_source]
        chosen += [items[i] for i in sorted(picks)]
    return chosen


def _mmlu(per_source: int, rng: np.random.Generator) -> list[Query]:
    folder = DATA / "decontam/benchmarks/mmlu"
    categories = json.loads((folder / "categories.json").read_text())
    group_of = {sub: group for group, subs in categories["categories"].items() for sub in subs}
    files = sorted((folder / "test_official_14042_mirror").glob("*_test.csv"))
    per_file = max(1, per_source // len(files) + 1)
    queries = []
    for path in files:
        subject = path.name.removesuffix("_test.csv")
        group = group_of[categories["subcategories"][subject][0]]
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        for index in rng.permutation(len(rows))[:per_file]:
            row = rows[index]
            text = row["question"] + "\n" + "\n".join(f"{c}. {row[f'choice{i}']}" for i, c in enumerate("ABCD"))
            queries.append(Query("mmlu", text, 0.2 + MMLU_GROUP_DIFFICULTY.get(group, -0.2), 60))
    return queries


# ----- labels, costs, router ---------------------------------------------------------------------


def correctness(queries: list[Query], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One deterministic (temperature-0) outcome per query and model, drawn from the IRT probabilities."""
    difficulty = np.array([q.difficulty for q in queries]) + rng.normal(0, HIDDEN_NOISE, len(queries))
    draws = rng.random(len(queries))  # one draw per query: a query the small model solves, the large one solves too
    return {model: (draws < 1 / (1 + np.exp(-DISCRIMINATION * (ability - difficulty)))).astype(float)
            for model, ability in ABILITY.items()}


def flops(queries: list[Query], params: float) -> np.ndarray:
    return np.array([2 * params * (q.prompt_tokens + q.output_tokens) for q in queries])


def embed(queries: list[Query], cache_path: Path | None) -> np.ndarray:
    """MiniLM embeddings of the prompts; with ``cache_path``, reused when the same prompts were embedded before."""
    from serving.gateway.embedding import TextEmbedder

    texts = [q.text[:2000] for q in queries]
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    if cache_path is not None and cache_path.exists():
        stored = np.load(cache_path)
        if str(stored["digest"]) == digest:
            return stored["vectors"]
    started = time.perf_counter()
    vectors = TextEmbedder().encode(texts)
    logger.info("embedded %d queries in %.0f s", len(queries), time.perf_counter() - started)
    if cache_path is not None:
        np.savez(cache_path, digest=digest, vectors=vectors)
    return vectors


# ----- the stream ---------------------------------------------------------------------------------


def make_stream(queries: list[Query], pool: np.ndarray, mix: dict[str, float], alpha: float, length: int,
                rng: np.random.Generator) -> np.ndarray:
    """Query indices: a source by ``mix``, then a query of it (from ``pool``) by Zipf(``alpha``) popularity."""
    sources = [s for s in mix if any(queries[i].source == s for i in pool)]
    weights = np.array([mix[s] for s in sources])
    picks = rng.choice(len(sources), size=length, p=weights / weights.sum())
    stream = np.empty(length, dtype=np.int64)
    for position, source in enumerate(sources):
        members = rng.permutation([i for i in pool if queries[i].source == source])  # popularity rank order
        popularity = 1.0 / np.arange(1, len(members) + 1) ** alpha
        where = np.flatnonzero(picks == position)
        stream[where] = members[rng.choice(len(members), size=len(where), p=popularity / popularity.sum())]
    return stream


def simulate(stream: np.ndarray, route_small: np.ndarray, cost: dict[str, np.ndarray],
             correct: dict[str, np.ndarray], output_bytes: np.ndarray, policy: Policy | None,
             entries: int) -> dict[str, float]:
    """Run the stream through our cache (``policy`` None: no cache) with the given routing; totals."""
    cache = MemoryCache(CacheLimits(policy=policy, max_entries=entries, max_bytes=2**62,
                                    frequency_window=max(10 * entries, 1000))) if policy else None
    spent = quality = 0.0
    hits = 0
    for index in stream.tolist():
        model = "small" if route_small[index] else "large"
        key = str(index)
        if cache is not None:
            found = cache.get(key)
            if found is not None:
                hits += 1
                quality += correct[found.model][index]
                continue
        spent += cost[model][index]
        quality += correct[model][index]
        if cache is not None:
            cache.put(CachedAnswer(key, model, b" " * int(output_bytes[index]), float(cost[model][index])))
    return {"flops": spent, "quality": quality, "hit_rate": hits / len(stream)}


# ----- one experiment ---------------------------------------------------------------------------


def run_experiment(name: str, queries: list[Query], features: np.ndarray, correct: dict[str, np.ndarray],
                   train: np.ndarray, test: np.ndarray, mix: dict[str, float], alpha: float, length: int,
                   cache_fractions: list[float], target_quality: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    router = Router.fit(features[train], correct["small"][train], correct["large"][train], small="small",
                        large="large", target_quality=target_quality, large_cost=LARGE_PARAMS / SMALL_PARAMS,
                        seed=seed)
    route_small = router.probability_small_ok(features) >= router.threshold
    oracle_small = correct["small"] >= correct["large"]
    cost = {"small": flops(queries, SMALL_PARAMS), "large": flops(queries, LARGE_PARAMS)}
    output_bytes = np.array([4 * q.output_tokens for q in queries])
    stream = make_stream(queries, test, mix, alpha, length, rng)
    unique = len(np.unique(stream))
    all_large = np.zeros(len(queries), dtype=bool)
    baseline = simulate(stream, all_large, cost, correct, output_bytes, None, 1)
    rows = []
    for routing_name, routing in (("all-large", all_large), ("router", route_small), ("oracle", oracle_small)):
        for fraction in [0.0, *cache_fractions]:
            for policy in ([None] if fraction == 0 else list(Policy)):
                entries = max(1, int(fraction * unique))
                result = simulate(stream, routing, cost, correct, output_bytes, policy, entries)
                rows.append({
                    "routing": routing_name, "policy": policy.value if policy else "none",
                    "cache_fraction": fraction, "entries": entries if policy else 0,
                    "hit_rate": round(result["hit_rate"], 4),
                    "flops_saved_x": round(baseline["flops"] / result["flops"], 3),
                    "quality_ratio": round(result["quality"] / baseline["quality"], 4),
                })
    held_out = router.evaluate(features[test], correct["small"][test], correct["large"][test])
    tradeoff = []
    for target in (0.90, 0.95, 0.98, 0.99):
        other = Router.fit(features[train], correct["small"][train], correct["large"][train], small="small",
                           large="large", target_quality=target, large_cost=LARGE_PARAMS / SMALL_PARAMS, seed=seed)
        result = other.evaluate(features[test], correct["small"][test], correct["large"][test])
        tradeoff.append({"target_quality": target, "held_out_quality_ratio": round(result.quality_ratio, 4),
                         "held_out_small_share": round(result.small_share, 4),
                         "held_out_cost_ratio": round(result.cost_ratio, 3)})
    return {
        "name": name, "mix": mix, "zipf_alpha": alpha, "requests": length, "unique_queries_asked": unique,
        "router": {"threshold": round(router.threshold, 4), "target_quality": target_quality,
                   "held_out_small_share": round(held_out.small_share, 4),
                   "held_out_quality_ratio": round(held_out.quality_ratio, 4),
                   "held_out_cost_ratio": round(held_out.cost_ratio, 3)},
        "router_tradeoff": tradeoff,
        "all_large_accuracy": round(float(correct["large"][stream].mean()), 4),
        "all_small_accuracy": round(float(correct["small"][stream].mean()), 4),
        "rows": rows,
    }


def best(rows: list[dict[str, Any]], routing: str, fraction: float) -> dict[str, Any]:
    candidates = [r for r in rows if r["routing"] == routing and r["cache_fraction"] == fraction]
    return max(candidates, key=lambda r: r["flops_saved_x"])


def print_table(experiment: dict[str, Any], fractions: list[float]) -> None:
    out = sys.stdout
    router = experiment["router"]
    out.write(f"\n== {experiment['name']}: {experiment['requests']} requests, "
              f"{experiment['unique_queries_asked']} unique held-out queries; router threshold {router['threshold']}, "
              f"held-out: {router['held_out_small_share']:.0%} to small, quality {router['held_out_quality_ratio']:.3f}, "
              f"{router['held_out_cost_ratio']:.2f}x\n")
    out.write(f"{'routing':<10} {'cache':>6} " + " ".join(f"{p:>14}" for p in ["none", *[p.value for p in Policy]])
              + "   (FLOPs saved x / hit rate; quality ratio)\n")
    for point in experiment["router_tradeoff"]:
        out.write(f"  router alone, calibrated for quality {point['target_quality']}: held-out quality "
                  f"{point['held_out_quality_ratio']}, {point['held_out_small_share']:.0%} to small, "
                  f"{point['held_out_cost_ratio']}x fewer FLOPs\n")
    rows = experiment["rows"]
    for routing in ("all-large", "router", "oracle"):
        for fraction in fractions:
            cells = []
            quality = None
            for policy in ["none", *[p.value for p in Policy]]:
                match = [r for r in rows if r["routing"] == routing and r["policy"] == policy
                         and r["cache_fraction"] == (0.0 if policy == "none" else fraction)]
                if match:
                    cells.append(f"{match[0]['flops_saved_x']:>7.2f}/{match[0]['hit_rate']:>5.1%}")
                    quality = match[0]["quality_ratio"]
                else:
                    cells.append(f"{'':>14}")
            out.write(f"{routing:<10} {fraction:>6.0%} " + " ".join(f"{c:>14}" for c in cells) + f"   q={quality}\n")


def goal_summary(claim: dict[str, Any], fractions: list[float]) -> dict[str, Any]:
    """The goal at each cache size: the best policy with the router, against cache alone and router alone."""
    router_only = next(r for r in claim["rows"] if r["routing"] == "router" and r["policy"] == "none")
    by_size = []
    for fraction in fractions:
        combined = best(claim["rows"], "router", fraction)
        cache_only = best(claim["rows"], "all-large", fraction)
        lru = next(r for r in claim["rows"] if r["routing"] == "router" and r["policy"] == "lru"
                   and r["cache_fraction"] == fraction)
        loss = round(1 - combined["quality_ratio"], 4)
        met = bool(combined["flops_saved_x"] >= 4 and loss < 0.02)
        by_size.append({"cache_fraction": fraction, "policy": combined["policy"],
                        "flops_saved_x": combined["flops_saved_x"], "quality_loss": loss, "met": met,
                        "cache_only_x": cache_only["flops_saved_x"], "cache_only_policy": cache_only["policy"],
                        "lru_with_router_x": lru["flops_saved_x"]})
        sys.stdout.write(f"goal at cache = {fraction:.0%} of the unique queries: {combined['policy']} + router "
                         f"{combined['flops_saved_x']}x, loss {loss:.2%} -> {'MET' if met else 'NOT MET'} "
                         f"(cache alone {cache_only['flops_saved_x']}x with {cache_only['policy']}, "
                         f"LRU + router {lru['flops_saved_x']}x, router alone {router_only['flops_saved_x']}x)\n")
    return {"target": ">= 4x FLOPs saved, quality loss < 2% on held-out queries", "by_cache_size": by_size,
            "router_only_x": router_only["flops_saved_x"], "router_tradeoff": claim["router_tradeoff"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small pool and stream (~2 min on 2 cores)")
    parser.add_argument("--per-source", type=int, default=None, help="queries taken from each source")
    parser.add_argument("--requests", type=int, default=None, help="requests per stream")
    parser.add_argument("--target-quality", type=float, default=0.985,
                        help="the router's calibration target (routed / all-large quality)")
    parser.add_argument("--budget-s", type=float, default=1200,
                        help="stop adding experiments once the simulations took this long (embedding not counted)")
    parser.add_argument("--embeddings-cache", type=Path, default=None,
                        help="an .npz file to keep the prompt embeddings in between runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not DATA.exists():
        raise SystemExit(f"the shared data is missing: {DATA} (set ARENA_SHARED_DATA)")
    started = time.perf_counter()
    per_source = args.per_source or (300 if args.quick else 2000)
    length = args.requests or (20_000 if args.quick else 100_000)
    fractions = [0.01, 0.05, 0.2]
    rng = np.random.default_rng(args.seed)
    queries = load_queries(per_source, rng)
    correct = correctness(queries, rng)
    features = embed(queries, args.embeddings_cache)
    simulations_started = time.perf_counter()
    order = rng.permutation(len(queries))
    train, test = order[: len(order) // 2], order[len(order) // 2:]
    experiments = []
    plan = [("chat mix, Zipf 0.9 (the claim)", MIXES["chat"], 0.9, train, test),
            ("chat mix, Zipf 0.6 (less repetition)", MIXES["chat"], 0.6, train, test),
            ("hard mix (math/code/MMLU heavy), Zipf 0.9", MIXES["hard"], 0.9, train, test)]
    # Out of distribution: the router never saw math or code prompts (GSM8K, HumanEval held out of training).
    unseen = np.array([i for i in train if queries[i].source not in ("gsm8k", "humaneval")])
    plan.append(("chat mix, router trained without GSM8K/HumanEval", MIXES["chat"], 0.9, unseen, test))
    for name, mix, alpha, train_split, test_split in plan:
        if experiments and time.perf_counter() - simulations_started > args.budget_s:
            logger.warning("budget spent: skipping %s", name)
            continue
        experiment = run_experiment(name, queries, features, correct, train_split, test_split, mix, alpha, length,
                                    fractions, args.target_quality, args.seed)
        experiments.append(experiment)
        print_table(experiment, fractions)
    goal = goal_summary(experiments[0], fractions)
    name = "gateway_quick_cpu" if args.quick else "gateway_cpu"
    path = write_result(name, {
        "benchmark": "gateway", "quick": args.quick, "queries": len(queries), "seed": args.seed,
        "model": {"small_params": SMALL_PARAMS, "large_params": LARGE_PARAMS, "ability": ABILITY,
                  "discrimination": DISCRIMINATION, "hidden_noise_sd": HIDDEN_NOISE},
        "goal": goal, "fractions": fractions, "experiments": experiments, "elapsed_s": round(time.perf_counter() - started, 1),
    }, packages=("numpy", "scikit-learn", "sentence-transformers", "torch"))
    sys.stdout.write(f"wrote {path.relative_to(RESULTS_DIR.parent.parent)}\n")


if __name__ == "__main__":
    main()
