"""What a runner serves. llama-server started with ``--embeddings`` or ``--reranking`` serves
nothing else, so one model can need up to three runners, each keyed by its mode."""

from __future__ import annotations

import enum


class RunnerMode(enum.StrEnum):
    CHAT = "chat"  # chat, completions, responses, messages, tokenize
    EMBEDDINGS = "embeddings"  # --embeddings
    RERANKING = "reranking"  # --reranking


# The route a client should use for each mode, for errors that send it elsewhere.
ROUTE = {
    RunnerMode.CHAT: "/v1/chat/completions",
    RunnerMode.EMBEDDINGS: "/v1/embeddings",
    RunnerMode.RERANKING: "/v1/rerank",
}
