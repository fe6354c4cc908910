"""What every page's frame needs: the badge count and the registry banner."""

from __future__ import annotations

from promotions import selectors


def frame(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"frame": selectors.frame_for_user(user)}
