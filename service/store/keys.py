"""Validation of everything that becomes part of a path or an object key.

Owners are lower-case hex (a key's hash), session ids a closed alphabet without ``/``; a
record's file name or key always appends a suffix, so even ``..`` is a plain name there. A
value that fails is refused before any I/O (``InvalidKey``): no traversal, no key
injection, and an owner can only ever name objects under its own prefix.
"""

from __future__ import annotations

import re

from service.store.errors import InvalidKey

SESSION_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
OWNER_RE = re.compile(r"[0-9a-f]{1,64}")
# A holder names a service process (host, pid, instance, perhaps its address for
# forwarding); it is stored, never used in a path.
HOLDER_RE = re.compile(r"[\x21-\x7e]{1,256}")


def check_owner(owner: str) -> str:
    if not isinstance(owner, str) or not OWNER_RE.fullmatch(owner):
        raise InvalidKey(f"owner must be 1-64 lower-case hex digits, got {owner!r:.80}")
    return owner


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not SESSION_ID_RE.fullmatch(session_id):
        raise InvalidKey(f"session id must match {SESSION_ID_RE.pattern}, got {session_id!r:.160}")
    return session_id


def check_key(owner: str, session_id: str) -> tuple[str, str]:
    return check_owner(owner), check_session_id(session_id)


def check_holder(holder: str) -> str:
    if not isinstance(holder, str) or not HOLDER_RE.fullmatch(holder):
        raise InvalidKey(
            f"lease holder must be 1-256 printable ASCII characters, got {holder!r:.80}"
        )
    return holder
