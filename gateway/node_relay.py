"""POST /_node/{mode}/{path}: another node of the fleet hands this one a request to run here.

The node that took the client's request has already translated it (Ollama, Anthropic …) into
what llama-server reads, so this hop relays it to a local runner as it is and streams the
runner's bytes back untouched: translation happens once, on the first node. It is never
forwarded again (this route asks only this node's runners), so a request crosses at most one
hop. Node-to-node requests carry the cluster key (``Authorization: Bearer <cluster_key>``);
without one configured, only the client API keys, if any, open it.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError
from gateway.relay import Relay
from gateway.request_body import read_request, require_flag
from runner.service import HOP_PREFIX, KEEP_ALIVE_HEADER, PRIMARY, RunnerMode, RunnerOptions
from runner.settings import Settings

PREFIX = HOP_PREFIX.decode()

# What a runner is asked on this hop: llama-server's paths, and nothing else of this node.
RUNNER_PATHS = frozenset({
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/messages",
    "/v1/messages/count_tokens", "/v1/responses", "/v1/responses/input_tokens", "/tokenize",
    "/detokenize", "/apply-template",
})


def _authorized(request: Request, settings: Settings) -> bool:
    keys = [settings.cluster_key] if settings.cluster_key else list(settings.api_keys)
    if not keys:
        return True  # a loopback fleet with no keys at all: as open as the gateway itself
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = token.strip().encode()
    return any([hmac.compare_digest(given, key.encode()) for key in keys])


async def node_relay(request: Request) -> Relay:
    settings: Settings = request.app.state.settings
    if not _authorized(request, settings):
        raise APIError(401, "node-to-node requests need the cluster key: send "
                       "'Authorization: Bearer <SWITCHBOARD_CLUSTER_KEY>'",
                       code="invalid_cluster_key", headers={"WWW-Authenticate": "Bearer"})
    mode_name: str = request.path_params["mode"]
    path = "/" + request.path_params["path"]
    if path not in RUNNER_PATHS:
        raise APIError(404, f"no runner route {path} on this node", code="not_found")
    try:
        mode = None if mode_name == PRIMARY else RunnerMode(mode_name)
    except ValueError:
        raise APIError(404, f"no runner mode {mode_name!r} (chat, embeddings, reranking or "
                       "primary)", code="not_found") from None
    body, data = await read_request(request)
    keep_alive = request.headers.get(KEEP_ALIVE_HEADER.decode())
    if keep_alive is not None:  # the first node took it out of the body: it applies here
        try:
            data["keep_alive"] = float(keep_alive)
        except ValueError:
            raise APIError(400, f"invalid {KEEP_ALIVE_HEADER.decode()}: {keep_alive!r}",
                           code="invalid_keep_alive") from None
    return Relay.for_request(request, body, data, path.encode(), require_flag(data, "stream"),
                             options=RunnerOptions(mode=mode, here=True))


routes = [Route(PREFIX + "{mode}/{path:path}", node_relay, methods=["POST"])]
