"""Query parameters: an unknown or repeated one is refused by name, not ignored.

A misspelt filter (`?tenat=acme`) would otherwise return everything, which a
client cannot tell from a filter that matched everything; of a repeated one
(`?tenant=a&tenant=b`) only the last would count. No parameter takes a list.
"""

from __future__ import annotations

from collections import Counter

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from esc.errors import MalformedRequest


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def accepted_query(route: APIRoute) -> tuple[str, ...]:
    """The query parameters `route` declares, its dependencies' included."""
    return tuple(sorted(_query_names(route.dependant)))


def reject_unknown_query(request: Request) -> None:
    """An app-wide dependency: 400 naming the unknown parameters and the accepted ones."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    accepted = accepted_query(route)
    unknown = sorted({name for name in request.query_params if name not in accepted})
    if unknown:
        which = ", ".join(accepted) if accepted else "none"
        raise MalformedRequest(
            f"unknown query parameter(s) {', '.join(unknown)}; "
            f"{request.method} {route.path} accepts: {which}"
        )
    counts = Counter(name for name, _ in request.query_params.multi_items())
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        raise MalformedRequest(
            f"query parameter(s) {', '.join(repeated)} given more than once; give each once"
        )
