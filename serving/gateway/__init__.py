"""The inference gateway: one OpenAI-compatible endpoint in front of several model endpoints.

A client asks for a *virtual* model (e.g. ``auto``); the gateway answers from its response cache
(exact match, opt-in embedding similarity; LRU, LFU, GDSF or least-expected-cost replacement; in
memory or in Redis) or sends the request to the cheapest real model its router expects to answer
as well as the large one. Arena battles never pass through it (see ``arena/providers/registry.py``).

Modules: ``keys`` (what is cacheable, cache keys), ``frequency`` (online popularity estimates),
``policies`` (replacement scores), ``cache`` (in-memory backend), ``redis_cache`` (Redis backend),
``semantic`` (similarity lookup), ``embedding`` (the MiniLM loader), ``router`` (the learned
multiplexer), ``labels`` (training data from arena votes and judge scores), ``config``,
``upstream`` (HTTP to the real models), ``metrics``, ``service`` (the request path) and ``server``
(the FastAPI app, the package's only FastAPI importer).
"""
