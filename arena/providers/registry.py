"""The model registry: which models the arena can reach, read from a TOML file.

Each ``[[models]]`` table names one model and the OpenAI-compatible endpoint serving it::

    [[models]]
    name = "demo-llama-tiny"                   # shown on the leaderboard
    base_url = "http://127.0.0.1:8100/v1"      # any OpenAI-compatible endpoint
    model_id = "demo-llama-tiny"               # the id that endpoint serves (default: name)
    api_key_env = "OPENAI_API_KEY"             # env var holding the key (optional)
    weight = 1.0                               # relative sampling weight in battles
    max_tokens = 512
    context_tokens = 8192                      # the context window (optional: else asked of the endpoint)
    organization = "Arena demo"
    license = "Apache-2.0"
    tags = ["open", "demo"]                    # e.g. open/proprietary, release-ok

A model served through the inference gateway (``serving/gateway``) is tagged ``gateway``: it must have
``weight = 0`` and can't be picked for a named battle (cached, routed answers would skew the votes).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


class RegistryError(ValueError):
    """The registry file is malformed; the message names the file and line."""


class UnknownModelError(KeyError):
    """A model name that the registry does not hold."""

    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}"


@dataclass(frozen=True)
class ModelSpec:
    """One model the arena can talk to."""

    name: str
    base_url: str
    model_id: str
    api_key_env: str | None = None
    weight: float = 1.0
    max_tokens: int = 512
    context_tokens: int | None = None  # prompt + answer, in tokens; None: unknown
    organization: str = ""
    license: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def api_key(self) -> str:
        """The key from the named environment variable; local servers accept any key."""
        if self.api_key_env:
            return os.environ.get(self.api_key_env, "") or "EMPTY"
        return "EMPTY"

    @property
    def is_open(self) -> bool:
        return "open" in self.tags

    @property
    def is_gateway(self) -> bool:
        """A virtual model of the inference gateway (cached and routed answers): never in battles."""
        return GATEWAY_TAG in self.tags


GATEWAY_TAG = "gateway"
_KNOWN_FIELDS = {f for f in ModelSpec.__dataclass_fields__}
_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*models[ \t]*\]\]", re.MULTILINE)


class ModelRegistry(Mapping[str, ModelSpec]):
    """An ordered, read-only mapping from model name to :class:`ModelSpec`."""

    def __init__(self, specs: list[ModelSpec]):
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise RegistryError(f"model {spec.name!r} is defined twice")
            self._specs[spec.name] = spec

    def __getitem__(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownModelError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def names(self) -> list[str]:
        return list(self._specs)

    def with_context_windows(self, windows: Mapping[str, int]) -> ModelRegistry:
        """A copy where models without ``context_tokens`` take the window given for them (if any)."""
        return ModelRegistry([
            replace(spec, context_tokens=windows[name])
            if spec.context_tokens is None and windows.get(name, 0) > spec.max_tokens else spec
            for name, spec in self._specs.items()
        ])

    @classmethod
    def from_toml_text(cls, text: str, source: str = "<string>") -> ModelRegistry:
        """Parse registry TOML; every error names ``source`` and the line it comes from."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RegistryError(f"{source}: invalid TOML: {exc}") from exc
        tables = data.get("models")
        if not isinstance(tables, list) or not tables:
            raise RegistryError(f"{source}: no [[models]] tables found")
        header_lines = _header_lines(text)
        specs = []
        for index, table in enumerate(tables):
            line = header_lines[index] if index < len(header_lines) else 0
            specs.append(_spec_from_table(table, f"{source}:{line}"))
        try:
            return cls(specs)
        except RegistryError as exc:
            raise RegistryError(f"{source}: {exc}") from exc

    @classmethod
    def from_toml(cls, path: str | Path) -> ModelRegistry:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RegistryError(f"cannot read model registry {path}: {exc}") from exc
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise RegistryError(f"{path}:{line}: not UTF-8 (byte {data[exc.start]:#04x}); save the file as UTF-8") from None
        return cls.from_toml_text(text, str(path))


def _header_lines(text: str) -> list[int]:
    """The line of each real ``[[models]]`` header, skipping look-alikes inside multi-line strings.

    A candidate line is a real header when the text before it is a complete TOML document
    (it is not inside an open string or array).
    """
    lines = []
    for match in _HEADER.finditer(text):
        try:
            tomllib.loads(text[: match.start()])
        except tomllib.TOMLDecodeError:
            continue
        lines.append(text.count("\n", 0, match.start()) + 1)
    return lines


def _spec_from_table(table: dict[str, Any], where: str) -> ModelSpec:
    unknown = set(table) - _KNOWN_FIELDS
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {sorted(unknown)} in [[models]]")
    for required in ("name", "base_url"):
        if not isinstance(table.get(required), str) or not table[required].strip():
            raise RegistryError(f"{where}: [[models]] needs a non-empty string {required!r}")
    for optional in ("model_id", "api_key_env", "organization", "license"):
        if optional in table and not isinstance(table[optional], str):
            raise RegistryError(f"{where}: {optional} must be a string, got {table[optional]!r}")
    weight = table.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        raise RegistryError(f"{where}: weight must be a finite number >= 0, got {weight!r}")
    max_tokens = table.get("max_tokens", 512)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise RegistryError(f"{where}: max_tokens must be a positive integer, got {max_tokens!r}")
    context_tokens = table.get("context_tokens")
    if context_tokens is not None and (
        not isinstance(context_tokens, int) or isinstance(context_tokens, bool) or context_tokens <= max_tokens
    ):
        raise RegistryError(f"{where}: context_tokens must be an integer above max_tokens ({max_tokens}), "
                            f"got {context_tokens!r}")
    tags = table.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RegistryError(f"{where}: tags must be a list of strings")
    if GATEWAY_TAG in tags and weight != 0:
        raise RegistryError(
            f"{where}: {table['name']!r} is a gateway virtual model (tag {GATEWAY_TAG!r}); its answers are cached "
            "and routed, so it can't take part in battles: set weight = 0 to offer it for direct chat only"
        )
    return ModelSpec(
        name=table["name"],
        base_url=table["base_url"].rstrip("/"),
        model_id=table.get("model_id", table["name"]),
        api_key_env=table.get("api_key_env") or None,
        weight=float(weight),
        max_tokens=max_tokens,
        context_tokens=context_tokens,
        organization=str(table.get("organization", "")),
        license=str(table.get("license", "")),
        tags=tuple(tags),
    )


def load_registry(path: str | Path | None = None) -> ModelRegistry:
    """Load the registry named by ``path`` or by the settings (``ARENA_MODELS_FILE``)."""
    if path is None:
        from arena.config import get_settings

        path = get_settings().models_file
    return ModelRegistry.from_toml(path)
