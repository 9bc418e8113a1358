"""The gateway's configuration: real endpoints, virtual models and the cache, from one TOML file.

::

    [cache]
    backend = "memory"            # or "redis" (shared by several gateways)
    redis_url = "redis://127.0.0.1:6379/0"
    policy = "lec"                # lru, lfu, gdsf, lec
    max_entries = 10000
    max_bytes = 268435456
    similarity = false            # opt-in: reuse the answer of a near-identical request
    similarity_threshold = 0.95
    cache_sampled = false         # by default only temperature-0 requests are cached

    [[endpoints]]                 # a real model on any OpenAI-compatible server
    name = "small"
    base_url = "http://127.0.0.1:8100/v1"
    model_id = "demo-qwen-tiny"   # the id that server serves (default: name)
    params_b = 0.6                # parameters in billions: FLOPs per token = 2 * params

    [[virtual_models]]
    name = "auto"
    router = "router.json"        # a trained router (arena-gateway train-router); its models are endpoints
    # or: target = "large"        # no routing, the cache in front of one endpoint
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.gateway.cache import CacheLimits
from serving.gateway.policies import Policy


class ConfigError(ValueError):
    """The gateway file is malformed; the message names the file and the table."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    base_url: str
    model_id: str
    params_b: float = 1.0
    api_key_env: str | None = None
    timeout_s: float = 120.0

    def api_key(self) -> str:
        return (os.environ.get(self.api_key_env, "") if self.api_key_env else "") or "EMPTY"

    def flops(self, tokens: int) -> float:
        """Forward FLOPs for ``tokens`` tokens (2 per parameter per token)."""
        return 2.0 * self.params_b * 1e9 * tokens


@dataclass(frozen=True)
class VirtualModel:
    name: str
    router: Path | None = None
    target: str | None = None


@dataclass(frozen=True)
class CacheConfig:
    backend: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "arena-gateway"
    limits: CacheLimits = field(default_factory=CacheLimits)
    similarity: bool = False
    similarity_threshold: float = 0.95
    cache_sampled: bool = False


@dataclass(frozen=True)
class GatewayConfig:
    endpoints: dict[str, Endpoint]
    virtual_models: dict[str, VirtualModel]
    cache: CacheConfig = field(default_factory=CacheConfig)

    @classmethod
    def from_toml(cls, path: str | Path) -> GatewayConfig:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"{path}: {error}") from None
        return cls.from_dict(data, source=str(path), base_dir=path.parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<config>", base_dir: Path = Path()) -> GatewayConfig:
        endpoints: dict[str, Endpoint] = {}
        for index, table in enumerate(data.get("endpoints", [])):
            endpoint = _endpoint(table, f"{source}: [[endpoints]] #{index + 1}")
            if endpoint.name in endpoints:
                raise ConfigError(f"{source}: endpoint {endpoint.name!r} is defined twice")
            endpoints[endpoint.name] = endpoint
        if not endpoints:
            raise ConfigError(f"{source}: no [[endpoints]] tables")
        virtual: dict[str, VirtualModel] = {}
        for index, table in enumerate(data.get("virtual_models", [])):
            model = _virtual(table, f"{source}: [[virtual_models]] #{index + 1}", endpoints, base_dir)
            if model.name in virtual or model.name in endpoints:
                raise ConfigError(f"{source}: model name {model.name!r} is used twice")
            virtual[model.name] = model
        return cls(endpoints, virtual, _cache(data.get("cache", {}), f"{source}: [cache]"))


def _endpoint(table: dict[str, Any], where: str) -> Endpoint:
    _known(table, {"name", "base_url", "model_id", "params_b", "api_key_env", "timeout_s"}, where)
    for required in ("name", "base_url"):
        if not isinstance(table.get(required), str) or not table[required].strip():
            raise ConfigError(f"{where}: needs a non-empty string {required!r}")
    params_b = table.get("params_b", 1.0)
    if not isinstance(params_b, int | float) or params_b <= 0:
        raise ConfigError(f"{where}: params_b must be a positive number (billions of parameters)")
    return Endpoint(name=table["name"], base_url=table["base_url"].rstrip("/"),
                    model_id=table.get("model_id", table["name"]), params_b=float(params_b),
                    api_key_env=table.get("api_key_env") or None, timeout_s=float(table.get("timeout_s", 120.0)))


def _virtual(table: dict[str, Any], where: str, endpoints: dict[str, Endpoint], base_dir: Path) -> VirtualModel:
    _known(table, {"name", "router", "target"}, where)
    if not isinstance(table.get("name"), str) or not table["name"].strip():
        raise ConfigError(f"{where}: needs a non-empty string 'name'")
    if ("router" in table) == ("target" in table):
        raise ConfigError(f"{where}: give exactly one of 'router' (a router file) or 'target' (an endpoint)")
    if "target" in table:
        if table["target"] not in endpoints:
            raise ConfigError(f"{where}: target {table['target']!r} is not an endpoint ({', '.join(endpoints)})")
        return VirtualModel(table["name"], target=table["target"])
    return VirtualModel(table["name"], router=(base_dir / table["router"]).resolve())


def _cache(table: dict[str, Any], where: str) -> CacheConfig:
    known = {"backend", "redis_url", "namespace", "policy", "max_entries", "max_bytes", "frequency_window",
             "similarity", "similarity_threshold", "cache_sampled"}
    _known(table, known, where)
    backend = table.get("backend", "memory")
    if backend not in ("memory", "redis"):
        raise ConfigError(f"{where}: backend must be 'memory' or 'redis', got {backend!r}")
    try:
        limits = CacheLimits(policy=Policy.parse(str(table.get("policy", "lec"))),
                             max_entries=int(table.get("max_entries", 10_000)),
                             max_bytes=int(table.get("max_bytes", 256 * 2**20)),
                             frequency_window=int(table.get("frequency_window", 100_000)))
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    threshold = float(table.get("similarity_threshold", 0.95))
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"{where}: similarity_threshold must lie in (0, 1]")
    return CacheConfig(backend=backend, redis_url=str(table.get("redis_url", "redis://127.0.0.1:6379/0")),
                       namespace=str(table.get("namespace", "arena-gateway")), limits=limits,
                       similarity=bool(table.get("similarity", False)), similarity_threshold=threshold,
                       cache_sampled=bool(table.get("cache_sampled", False)))


def _known(table: dict[str, Any], known: set[str], where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
