"""Running hashes of upload sessions, kept between the requests one process serves."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

MAX_CACHED_HASHERS = 256
Hashers = dict[str, "hashlib._Hash"]


class HasherCache:
    """Running hashes of sessions this process wrote, so a chunked upload is hashed once.

    Only an optimisation: an entry is found only under the exact key it was kept with (a
    size, or a version of the session's state), so a session that another process (a
    restart, another replica) continued misses, and its bytes are hashed again from the
    store. ``take`` removes the entry: two requests racing on one session never both
    trust it.
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[object, Hashers]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, upload_id: str, key: object) -> Hashers | None:
        with self._lock:
            entry = self._entries.pop(upload_id, None)
        return entry[1] if entry and entry[0] == key else None

    def keep(self, upload_id: str, key: object, hashers: Hashers) -> None:
        with self._lock:
            self._entries[upload_id] = (key, {name: h.copy() for name, h in hashers.items()})
            while len(self._entries) > MAX_CACHED_HASHERS:
                self._entries.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        with self._lock:
            self._entries.pop(upload_id, None)
