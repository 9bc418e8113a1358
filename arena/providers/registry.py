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
"""

from __future__ import annotations

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
        header_lines = [text.count("\n", 0, m.start()) + 1 for m in _HEADER.finditer(text)]
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
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RegistryError(f"cannot read model registry {path}: {exc}") from exc
        return cls.from_toml_text(text, str(path))


def _spec_from_table(table: dict[str, Any], where: str) -> ModelSpec:
    unknown = set(table) - _KNOWN_FIELDS
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {sorted(unknown)} in [[models]]")
    for required in ("name", "base_url"):
        if not isinstance(table.get(required), str) or not table[required].strip():
            raise RegistryError(f"{where}: [[models]] needs a non-empty string {required!r}")
    weight = table.get("weight", 1.0)
    if not isinstance(weight, int | float) or weight < 0:
        raise RegistryError(f"{where}: weight must be a number >= 0, got {weight!r}")
    max_tokens = table.get("max_tokens", 512)
    if not isinstance(max_tokens, int) or max_tokens <= 0:
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
