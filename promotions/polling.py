"""The live poll's key.

Every open request page asks every 3 s whether its request changed. The page hands its poll a
key signed for the viewer and the request, so that an unchanged request is answered from one
read of its row, without loading the session, the user and their roles. All the key can ever
earn is "nothing changed since the version you already have" (204 or 304, no body): a change is
shown only after the full sign-in and role check, as any page. It lasts POLL_KEY_SECONDS, after
which the poll takes the full path again (and the next panel carries a fresh key).
"""

from __future__ import annotations

from django.core import signing

SALT = "promotions.poll"
POLL_KEY_SECONDS = 3600


def poll_key(*, user_id: int, request_id: int) -> str:
    return signing.dumps([user_id, request_id], salt=SALT)


def poll_key_allows(key: str, request_id: int) -> bool:
    """Whether `key` was issued, within POLL_KEY_SECONDS, for a viewer of this request."""
    if not key or len(key) > 200:
        return False
    try:
        _user_id, signed_request_id = signing.loads(key, salt=SALT, max_age=POLL_KEY_SECONDS)
    except (signing.BadSignature, ValueError, TypeError):
        return False
    return signed_request_id == request_id
