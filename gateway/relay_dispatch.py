"""The relayed routes (chat, completions, embeddings, …) dispatched without Starlette's router.

Plain ASGI, innermost of the middleware: auth, body limit and access log have already run, as
for every route. For ``POST`` to one of these paths it calls the endpoint directly and answers
its :class:`~gateway.errors.APIError` itself, skipping the router's per-route matching and the
exception middleware's wrapping. That was about a tenth of the gateway's CPU per request under
16 clients (py-spy), on the path every token goes through. Anything else, and any other method
on these paths, goes on to the router as usual (a GET still gets its 405).

A route whose path ends in ``{mode}/{path:path}`` after a fixed prefix (the fleet's
``/_node/`` hop, every request that crosses nodes) is matched by that prefix, its two
parameters split here, since a router pass costs the hop what it saves the others.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import APIError, dialect_of


class RelayDispatch:
    def __init__(self, app: ASGIApp, routes: list[Route],
                 prefixed: list[Route] | None = None) -> None:
        self.app = app
        self.routes = {route.path: route for route in routes}
        for route in prefixed or ():
            if not route.path.endswith(_PARAMS):
                raise ValueError(f"{route.path}: a prefixed route ends in {_PARAMS}")
        self.prefixed = [(route.path.removesuffix(_PARAMS), route) for route in prefixed or ()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None and self.prefixed and scope["type"] == "http":
            route = self._by_prefix(scope)
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # what the access log labels its metrics with
        try:
            response = await route.endpoint(Request(scope, receive))
            await response(scope, receive, send)
        except APIError as exc:
            # Raised before any response byte (a relay reports mid-stream failures in the
            # stream), so the error can still be the whole answer.
            await exc.response(dialect_of(scope["path"]))(scope, receive, send)
        except ClientDisconnect:
            # The client left while sending its body: nobody to answer, and nothing went
            # wrong here. The access log counts it as 499; as a crash it was a 500 and three
            # tracebacks per client.
            return

    def _by_prefix(self, scope: Scope) -> Route | None:
        path: str = scope["path"]
        for prefix, route in self.prefixed:
            if path.startswith(prefix):
                mode, slash, rest = path[len(prefix):].partition("/")
                if mode and slash:
                    scope["path_params"] = {"mode": mode, "path": rest}
                    return route
        return None


_PARAMS = "{mode}/{path:path}"

