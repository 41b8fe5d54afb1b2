"""How deeply a JSON or YAML document may nest, checked before it is parsed.

Python's JSON decoder and PyYAML's composer recurse once per level: a few
kilobytes of brackets exhaust the interpreter's stack (RecursionError) long
before any size limit applies. Both checks here are iterative, so a document
is measured without being built.
"""

from __future__ import annotations

import re
from array import array
from itertools import accumulate

import yaml

# A descriptor nests 7 levels at most (deployment.vm_groups[].kpis[].metric_collector
# .type); every other body fewer. The bound leaves room for growth, far below the
# depth at which the parsers fail.
MAX_NESTING_DEPTH = 32


class TooDeep(ValueError):
    """The document nests deeper than MAX_NESTING_DEPTH; the message says so."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} nests deeper than {MAX_NESTING_DEPTH} levels, the most a request may "
            f"nest (a deployment descriptor needs fewer than 10): flatten it"
        )


# A JSON string, possibly unterminated (then it runs to the end, so an unclosed
# quote cannot make the scan quadratic); brackets inside strings do not count.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in `data` (well-formed or not)."""
    brackets = _JSON_STRING.sub(b"", data).translate(None, delete=_NOT_BRACKETS)
    # Opening brackets step +1, closing ones -1 (a signed byte): the deepest
    # level is the largest running sum, computed without a Python-level loop.
    return max(accumulate(array("b", brackets.translate(_STEP))), default=0)


def check_json_depth(data: bytes, what: str = "the JSON body") -> None:
    if json_depth(data) > MAX_NESTING_DEPTH:
        raise TooDeep(what)


def check_yaml_depth(text: str, what: str = "the YAML document") -> None:
    """Raise TooDeep past MAX_NESTING_DEPTH; yaml.YAMLError if `text` is not YAML.

    PyYAML's event parser is a state machine (it does not recurse), so the
    depth is counted from its events before the recursive composer runs.
    """
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING_DEPTH:
                raise TooDeep(what)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
