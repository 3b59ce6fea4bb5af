"""How a file a model produced (or a caller uploaded) is served: inline only if it is an image, a sound or
a video by its name's type *and* by its first bytes; otherwise as a download.

A model names its files and their types, and both are the attacker's: an ``.html`` file, an SVG
(which runs scripts), or HTML called ``cat.png``. So the type a browser gets is never the claimed
one unless the bytes bear it out, under the signatures below (the same rules for every file), and
HTML and SVG are never among them.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Callable
from urllib.parse import quote

DOWNLOAD_TYPE = "application/octet-stream"
# (does the head of the file match, the types it may then be served as)
SIGNATURES: list[tuple[Callable[[bytes], bool], frozenset[str]]] = [
    (lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"), frozenset({"image/png"})),
    (lambda head: head.startswith(b"\xff\xd8\xff"), frozenset({"image/jpeg", "image/jpg", "image/pjpeg"})),
    (lambda head: head[:6] in (b"GIF87a", b"GIF89a"), frozenset({"image/gif"})),
    (lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP", frozenset({"image/webp"})),
    (lambda head: head.startswith(b"BM"), frozenset({"image/bmp", "image/x-ms-bmp"})),
    (lambda head: head[:4] == b"RIFF" and head[8:12] == b"WAVE",
     frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"})),
    (lambda head: head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0),
     frozenset({"audio/mpeg", "audio/mp3"})),
    (lambda head: head.startswith(b"OggS"), frozenset({"audio/ogg", "video/ogg", "application/ogg"})),
    (lambda head: head.startswith(b"fLaC"), frozenset({"audio/flac", "audio/x-flac"})),
    (lambda head: head[4:8] == b"ftyp",
     frozenset({"video/mp4", "audio/mp4", "audio/x-m4a", "video/quicktime", "image/avif", "image/heic"})),
    (lambda head: head.startswith(b"\x1aE\xdf\xa3"), frozenset({"video/webm", "audio/webm", "video/x-matroska"})),
]


def inline_type(name: str, claimed: str | None, head: bytes) -> str | None:
    """The media type to show the file as, or None for a download: the claimed type (else the one its
    name suggests) when the file's first bytes have a signature that allows that type."""
    wanted = (claimed or mimetypes.guess_type(name)[0] or "").lower()
    for matches, allowed in SIGNATURES:
        if wanted in allowed and matches(head):
            return wanted
    return None


def disposition(kind: str, name: str) -> str:
    """A ``Content-Disposition`` header for a file name the model chose: an ASCII stand-in and the
    exact name percent-encoded (RFC 6266), so no quote or line break of it reaches the header."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120].strip("._") or "file"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name[:255], safe='')}"


def file_answer_headers(name: str, claimed: str | None, head: bytes) -> tuple[str, dict[str, str]]:
    """The content type and headers to serve a run's file with."""
    media_type = inline_type(name, claimed, head)
    if media_type is None:
        return DOWNLOAD_TYPE, {"Content-Disposition": disposition("attachment", name),
                               "X-Content-Type-Options": "nosniff"}
    return media_type, {"Content-Disposition": disposition("inline", name), "X-Content-Type-Options": "nosniff"}
