"""JSON from strangers, within bounds: how deep it nests, refused with a message instead of a crash.

Python's parser gives up on deep nesting with a ``RecursionError`` (a 500 wherever it is not
caught), and a document a little less deep still breaks what comes after it: a database's JSON
type, a serializer, a validator. So every document the platform keeps (a manifest, a predict
body, an async run, a spec) is held to :data:`MAX_JSON_DEPTH` levels.
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 64


class TooDeep(ValueError):
    """A JSON document nested deeper than the platform keeps."""

    def __init__(self, limit: int = MAX_JSON_DEPTH):
        super().__init__(f"it is nested deeper than {limit} levels")


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` (parsed JSON) nests arrays and objects more than ``limit`` levels deep; looked at
    without recursion, and only as deep as ``limit``."""
    level: list[tuple[Any, int]] = [(value, 1)]
    while level:
        item, depth = level.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        level.extend((child, depth + 1) for child in children)
    return False


def load_json(data: bytes | str, limit: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads(data)``, or :class:`TooDeep` for a document nested more than ``limit`` levels
    (``ValueError`` for one that is not JSON, as ``json.loads`` raises)."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise TooDeep(limit) from None
    if json_depth_exceeds(value, limit):
        raise TooDeep(limit)
    return value
