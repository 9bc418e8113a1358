"""Model providers: the registry of models and the one OpenAI-compatible client that reaches them."""

from arena.providers.client import (
    ChatClient,
    ChatResult,
    ProviderError,
    StreamChunk,
    discover_context_windows,
)
from arena.providers.registry import ModelRegistry, ModelSpec, RegistryError, UnknownModelError, load_registry

__all__ = [
    "ChatClient",
    "ChatResult",
    "ModelRegistry",
    "ModelSpec",
    "ProviderError",
    "RegistryError",
    "StreamChunk",
    "UnknownModelError",
    "discover_context_windows",
    "load_registry",
]
