"""Model providers: the registry of models and the one OpenAI-compatible client that reaches them."""

from arena.providers.client import ChatClient, ChatResult, ProviderError, StreamChunk
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
    "load_registry",
]
