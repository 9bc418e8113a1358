"""``arena-gateway``: run the gateway, or train its router from the platform's labelled data.

    arena-gateway serve --config gateway.toml --port 8200
    arena-gateway train-router --battles dist/battles --small small --large large --out router.json
    arena-gateway train-router --scores judge_scores.csv --small small --large large --out router.json
    arena-gateway train-router --labels labels.jsonl --small small --large large --out router.json
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger("serving.gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arena-gateway", description="Caching, routing OpenAI-compatible gateway.")
    parser.add_argument("--log-level", default="info")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the gateway")
    serve.add_argument("--config", required=True, help="the gateway TOML file")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8200)
    train = commands.add_parser("train-router", help="train a router on labelled queries")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--battles", help="the battles dataset (arena export battles): Parquet folder or JSONL")
    source.add_argument("--scores", help="judge scores: a table with prompt, model, score")
    source.add_argument("--labels", help="a table with prompt and small_quality/large_quality (or small_ok)")
    train.add_argument("--small", required=True, help="the cheap model (an endpoint name of the gateway)")
    train.add_argument("--large", required=True, help="the strong model")
    train.add_argument("--small-model-id", help="the model name in the data, if not --small")
    train.add_argument("--large-model-id", help="the model name in the data, if not --large")
    train.add_argument("--target-quality", type=float, default=0.98, help="routed quality / all-large quality")
    train.add_argument("--cost-ratio", type=float, default=10.0, help="large cost / small cost (e.g. FLOPs)")
    train.add_argument("--out", required=True, help="where to write the router (JSON)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            _serve(args)
        else:
            _train(args)
    except (ValueError, OSError, ConnectionError) as error:
        raise SystemExit(f"arena-gateway: {error}") from None


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from serving.gateway.cache import MemoryCache
    from serving.gateway.config import GatewayConfig
    from serving.gateway.redis_cache import RedisCache
    from serving.gateway.server import create_app
    from serving.gateway.service import Gateway

    config = GatewayConfig.from_toml(args.config)
    cache: MemoryCache | RedisCache
    if config.cache.backend == "redis":
        cache = RedisCache(config.cache.limits, url=config.cache.redis_url, namespace=config.cache.namespace)
        cache.ping()
    else:
        cache = MemoryCache(config.cache.limits)
    gateway = Gateway(config, cache)
    logger.info("gateway: models %s, %s cache (%s)", gateway.model_names(), config.cache.backend,
                config.cache.limits.policy.value)
    uvicorn.run(create_app(gateway), host=args.host, port=args.port, log_level=args.log_level.lower())


def _train(args: argparse.Namespace) -> None:
    from serving.gateway import labels
    from serving.gateway.embedding import TextEmbedder
    from serving.gateway.router import Router

    small_id, large_id = args.small_model_id or args.small, args.large_model_id or args.large
    if args.battles:
        data = labels.from_battles(labels.read_table(args.battles), small_id, large_id)
    elif args.scores:
        data = labels.from_scores(labels.read_table(args.scores), small_id, large_id)
    else:
        data = labels.from_labels(labels.read_table(args.labels))
    features = TextEmbedder().encode(data.prompts)
    router = Router.fit(features, data.small_quality, data.large_quality, small=args.small, large=args.large,
                        target_quality=args.target_quality, large_cost=args.cost_ratio)
    router.save(args.out)
    quality = router.evaluate(features, data.small_quality, data.large_quality)
    sys.stdout.write(f"{len(data)} labelled queries; threshold {router.threshold:.3f}: "
                     f"{quality.small_share:.0%} to {args.small}, quality {quality.quality_ratio:.3f} of all-{args.large}, "
                     f"cost {quality.cost_ratio:.2f}x lower (in-sample)\nwrote {args.out}\n")


if __name__ == "__main__":
    main()
