"""JSON documents as the gate reads them: an object that repeats a key is marked, never merged.

``json.loads`` keeps the last of two values for one key, so a scrubber that judges
the parsed document judges that one only, while the bytes on disk or on the wire
still hold the first for a receiver that keeps the first. Every parse of a
document on its way to the scrubber goes through :func:`loads`, which marks each
object with a repeated key; the scrubber rejects a document holding a mark.
Standard library only, and free of side effects at import, so the spool and the
value types can use it.
"""

from __future__ import annotations

import json
from typing import Any


class RepeatedKeys(dict[str, Any]):
    """An object in which some key appeared more than once (the last value kept, as ``json`` does)."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    return obj if len(obj) == len(pairs) else RepeatedKeys(obj)


def loads(raw: bytes | str) -> Any:
    """Parse ``raw`` as ``json.loads`` does, marking every object that repeats a key."""
    return json.loads(raw, object_pairs_hook=_object)
