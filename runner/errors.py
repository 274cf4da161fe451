"""Every error the runner side raises that a client may see, in one module.

They all derive from :class:`ServiceError`, so the gateway translates them to HTTP in one place
(``gateway.errors.service_error``) and a route never needs to know which module raised one.
The modules that raise them import them from here; the gateway reaches them through
:mod:`runner.service`. Errors of the runner side's own plumbing (a corrupt GGUF header, an
archive that would escape its directory) stay with their modules and never reach a client as
they are.
"""

from __future__ import annotations

from runner.modes import ROUTE, RunnerMode
from runner.units import format_bytes


class ServiceError(Exception):
    """Something the runner side refuses or cannot do; the message is for the user."""


class ModelNotFoundError(ServiceError, LookupError):
    """No configured or stored model has that name or alias."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


class ModeNotServedError(ServiceError, ValueError):
    """A request for a mode the model's config does not serve (chat on an embeddings model,
    rerank on a chat model)."""

    def __init__(self, model: str, mode: RunnerMode, served: frozenset[RunnerMode]) -> None:
        if mode is RunnerMode.RERANKING:
            text = (f"model '{model}' is not a reranking model: set 'reranking: true' in its "
                    "config to serve /v1/rerank")
        else:
            only = next(iter(served))
            text = f"model '{model}' is {_ARTICLE[only]} {only} model: use {ROUTE[only]}"
        super().__init__(text)
        self.mode = mode


_ARTICLE = {RunnerMode.CHAT: "a", RunnerMode.EMBEDDINGS: "an", RunnerMode.RERANKING: "a"}


class NoRunnerError(ServiceError, RuntimeError):
    """No runner variant exists for this machine; the message says how to get one."""


class RunnerStartError(ServiceError, RuntimeError):
    """The runner did not become healthy; the message carries its last output lines."""


class ModelSourceError(ServiceError, RuntimeError):
    """A model's source cannot produce a GGUF file; the message says what to do."""


class ShuttingDownError(ServiceError, RuntimeError):
    """The server is stopping and takes no new work."""


class ModelTooLargeError(ServiceError, RuntimeError):
    """The model needs more memory than can be made available for it."""

    def __init__(self, model: str, needs: int, available: int) -> None:
        super().__init__(
            f"model '{model}' needs {format_bytes(needs)}, "
            f"{format_bytes(max(available, 0))} available"
        )
        self.needs = needs
        self.available = available


class NoRoomError(ServiceError, RuntimeError):
    """No room for the model now without waiting for busy runners: in a fleet, the client
    retries after ``retry_after`` seconds rather than queue behind another model's work."""

    def __init__(self, model: str, needs: int, available: int, retry_after: int = 2) -> None:
        super().__init__(
            f"no room for model '{model}' now: it needs {format_bytes(needs)}, "
            f"{format_bytes(max(available, 0))} can be freed without waiting for requests "
            "in flight; retry shortly"
        )
        self.needs = needs
        self.available = available
        self.retry_after = retry_after


class NodesUnreachableError(ServiceError, RuntimeError):
    """The model is only on nodes that just failed to answer: retry once they are back or
    have left the fleet's view."""

    def __init__(self, model: str, nodes: list[str], retry_after: int) -> None:
        super().__init__(
            f"model '{model}' is only on node(s) {', '.join(nodes)}, which did not answer "
            "just now; retry shortly"
        )
        self.model = model
        self.retry_after = retry_after


class ModelInUseError(ServiceError, RuntimeError):
    """The model has requests in flight or waiting, or is loading: it cannot be removed now."""

    def __init__(self, model: str, why: str) -> None:
        super().__init__(f"model '{model}' is in use ({why}): delete it once it is idle")


class QueueFullError(ServiceError, RuntimeError):
    """Too many requests are waiting for a runner; retry after ``retry_after`` seconds."""

    def __init__(self, limit: int, retry_after: int = 1) -> None:
        super().__init__(f"server busy: {limit} requests are already waiting for a model")
        self.retry_after = retry_after


class ConfiguredModelError(ServiceError, ValueError):
    """A store operation on a model that comes from the config, not the store."""

    def __init__(self, model: str, source: str) -> None:
        super().__init__(f"model '{model}' comes from the config ({source}), not the store: "
                         "remove it from the config instead")


class InvalidNameError(ServiceError, ValueError):
    """A model name or digest that cannot address the store."""


class StoreError(ServiceError, RuntimeError):
    """A store operation that cannot be done; the message says why and what to do."""


class ModelNotInStoreError(StoreError, LookupError):
    """No manifest for that name."""


class PullError(ServiceError, RuntimeError):
    """A pull that cannot go on; the message is for the user, ``status`` for HTTP."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class PullRefusedError(ServiceError, PermissionError):
    """A pull through the API from a host the operator did not allow (the CLI has no such
    limit: its user is the operator)."""

    def __init__(self, host: str, allowed: str, param: str) -> None:
        super().__init__(f"pulling from {host!r} is not allowed through the API: only the "
                         f"registry {allowed!r} and pull_allowed_hosts are")
        self.param = param
