"""Every write of the promotion workflow: one function, one transaction, one audit event."""

from __future__ import annotations


def requests_refresh_evidence(*, version_ids: set[int]) -> int:
    return 0
