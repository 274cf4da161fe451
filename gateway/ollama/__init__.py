"""Ollama's native API on the gateway's port, for tools that speak only Ollama.

``/api/chat``, ``/api/generate`` and ``/api/embed`` translate to the runner's OpenAI routes
(:mod:`.generate`, :mod:`.embed`); ``/api/tags``, ``/api/show``, ``/api/delete`` and
``/api/version`` answer from the catalog and store (:mod:`.local_models`); ``/api/create``
and ``/api/copy`` make models in the store (:mod:`.create`), over blobs uploaded to
``/api/blobs`` (:mod:`.blobs`). ``/api/ps`` and
``/api/pull`` are switchboard's own (``gateway.admin``, ``gateway.pull``), in Ollama's shape.
Errors on ``/api/*`` are Ollama's ``{"error": message}``.
"""

from __future__ import annotations

from gateway.ollama import blobs, create, embed, generate, local_models

relayed = [*generate.routes, *embed.routes]
routes = [*relayed, *local_models.routes, *create.routes, *blobs.routes]
