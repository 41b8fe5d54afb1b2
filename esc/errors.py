"""Errors the controller raises for a request it cannot carry out.

Each names the problem and what to do next; the REST API maps the kind to
an HTTP status (esc.api.problems), the CLI prints the message.
"""


class EscError(Exception):
    """Base of every error meant for an operator or a northbound client."""

    title = "Request failed"


class InvalidRequest(EscError):
    title = "Invalid request"


class NotFound(EscError):
    title = "Not found"


class Conflict(EscError):
    title = "Conflict"


class Unavailable(EscError):
    title = "Temporarily unavailable"


class TooLarge(EscError):
    title = "Request too large"


class InsufficientStorage(EscError):
    """The node's file system lacks the room the request needs."""

    title = "Insufficient storage"


class MalformedRequest(InvalidRequest):
    """The request could not even be parsed (bad YAML/JSON, not UTF-8)."""

    title = "Malformed request"
