"""POST /v1/rerank (also /rerank): scores documents against a query, on a runner started with
``--reranking`` (a model configured with ``reranking: true``). Jina's and Cohere's shape:
``results`` sorted by ``relevance_score``, each with the ``index`` of its input document, and
that document's text with ``return_documents``."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError
from gateway.relay import Relay
from gateway.request_body import read_request, require_flag
from runner.service import Lease, RunnerMode, RunnerOptions

PATH = b"/v1/rerank"
_RERANKING = RunnerOptions(mode=RunnerMode.RERANKING)


class _WithDocuments:
    """Adds each result's document, which llama-server leaves out in this shape."""

    def __init__(self, documents: list[str]) -> None:
        self.documents = documents

    def begin(self, lease: Lease, waited: float) -> None:
        pass

    def whole(self, body: bytes) -> bytes:
        data = orjson.loads(body)
        for result in data.get("results", []):
            result["document"] = {"text": self.documents[result["index"]]}
        return orjson.dumps(data)


async def rerank(request: Request) -> Relay:
    body, data = await read_request(request)
    if not isinstance(data.get("query"), str):
        raise APIError(400, "'query' must be a string", param="query")
    documents: Any = data.get("documents")
    if (not isinstance(documents, list) or not documents
            or not all(isinstance(d, str) for d in documents)):
        raise APIError(400, "'documents' must be a non-empty array of strings",
                       param="documents")
    top_n = data.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int)
                              or top_n < 1):
        raise APIError(400, "'top_n' must be a positive integer", param="top_n")
    translation = _WithDocuments(documents) if require_flag(data, "return_documents") else None
    return Relay.for_request(request, body, data, PATH, False, options=_RERANKING,
                             translation=translation)


routes = [
    Route("/v1/rerank", rerank, methods=["POST"]),
    Route("/rerank", rerank, methods=["POST"]),
]
