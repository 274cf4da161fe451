"""SWITCHBOARD_LOG_FORMAT=json: each log record as one JSON object on one line, for log
shippers (Loki, Elasticsearch, CloudWatch) that would otherwise parse text.

Every object has ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``event``: the access
log's lines are ``"event": "request"`` with the request's fields (``request_id``, ``model``,
``status``, tokens, ``duration_ms`` …) as keys of their own; any other line's event is its
message. A line the gateway logs while it serves a request carries that request's
``request_id`` too; the runner side's do not (its background tasks inherit the context of the
request that started them: a health monitor would carry that request's id for good). JSON's
own escaping keeps a client's control characters from forging lines.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter

_FIRST = ("time", "level", "logger", "event")
_REQUEST_LOGGERS = ("gateway.", "switchboard.")
# Set by the access log for the length of each request, inherited by the tasks it starts.
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "switchboard_request_id", default=None)


class JsonLineFormatter(OrjsonFormatter):
    def __init__(self) -> None:
        super().__init__("{levelname}{name}{message}", style="{", timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger"})

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        message = log_data.pop("message", "")
        if "event" not in log_data:
            log_data["event"] = message
        log_data["level"] = str(log_data.get("level", "")).lower()
        if "request_id" not in log_data and record.name.startswith(_REQUEST_LOGGERS):
            request_id = current_request_id.get()
            if request_id is not None:
                log_data["request_id"] = request_id
        # The fixed keys first, for a reader of the raw lines.
        first = {key: log_data.pop(key) for key in _FIRST if key in log_data}
        rest = dict(log_data)
        log_data.clear()
        log_data.update(first)
        log_data.update(rest)
