"""ESC's tagged log lines: [date=…][loglevel=…][tid=…][cl=…][tags=…][msg=…].

`cl` is the component class an ESC operator filters on: NBI (northbound
API), SBI (southbound: VIM calls), SM (the transaction state machine),
MONITORING, DYNAMIC_MAPPING; it follows from the logging module's package.
`tid` is the transaction being worked on in this thread, set by the engine.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

current_tid: contextvars.ContextVar[str] = contextvars.ContextVar("esc_tid", default="-")

# Longest prefix wins.
CLASS_OF_LOGGER = {
    "esc.api": "NBI",
    "esc.engine.controller": "NBI",
    "esc.engine.northbound": "NBI",  # the writes northbound clients ask for
    "esc.vim": "SBI",
    "esc.engine": "SM",
    "esc.monitor": "MONITORING",
    "esc.monitor.mappings": "DYNAMIC_MAPPING",
    "uvicorn": "NBI",  # the HTTP server of the northbound API
}
# A logger whose last name part would be a misleading tag: uvicorn logs every
# server message, INFO included, to "uvicorn.error".
TAG_OF_LOGGER = {"uvicorn.error": "uvicorn"}


@contextmanager
def transaction_context(tx_id: str) -> Iterator[None]:
    token = current_tid.set(tx_id)
    try:
        yield
    finally:
        current_tid.reset(token)


def component_class(logger_name: str) -> str:
    matches = [p for p in CLASS_OF_LOGGER if logger_name == p or logger_name.startswith(p + ".")]
    return CLASS_OF_LOGGER[max(matches, key=len)] if matches else "SYSTEM"


class TaggedFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        tags = (
            getattr(record, "tags", None)
            or TAG_OF_LOGGER.get(record.name)
            or record.name.rsplit(".", 1)[-1]
        )
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return (
            f"[date={when}][loglevel={record.levelname}][tid={current_tid.get()}]"
            f"[cl={component_class(record.name)}][tags={tags}][msg={message}]"
        )
