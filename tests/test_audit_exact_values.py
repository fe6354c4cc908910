"""Every surface that shows entries shows the exact values their hash was computed from."""

import json
from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest

from promotions import audit
from promotions.audit import log as audit_log
from tests.test_api import api_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def varied_entries(monkeypatch, requester):
    """Entries whose times have microseconds, none, and a thousandth exactly; texts and details
    that JSON escapes."""
    moments = iter(
        [
            datetime(2026, 3, 1, 9, 0, 0, 123456, tzinfo=UTC),
            datetime(2026, 3, 1, 9, 0, 1, 0, tzinfo=UTC),
            datetime(2026, 3, 1, 9, 0, 2, 7000, tzinfo=UTC),
            datetime(2026, 3, 1, 9, 0, 3, 999999, tzinfo=UTC),
        ]
    )
    monkeypatch.setattr(audit_log.timezone, "now", lambda: next(moments))
    audit.record(action="request.created", actor=requester, meaning='Requested <b>&"quoted"', version=3)
    audit.record(action="review.approved", meaning="ok", details={"note": "ümlaut\n", "n": [1, 2.5]})
    audit.record(action="registry.drift", meaning="moved", model_name="m/x", from_stage="A", to_stage="B")
    audit.record(action="request.cancelled", meaning="gone", request_id=7, details={"empty": {}})
    monkeypatch.undo()


def test_every_entry_the_api_returns_recomputes_to_its_hash(auditor, varied_entries):
    items = api_client(auditor).get("/api/audit?limit=500").json()["items"]
    assert len(items) >= 4
    for item in items:
        assert audit.compute_hash(item) == item["hash"], item["sequence"]


class _HashedSpans(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows: list[tuple[dict, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-hashed" in attrs:
            self.rows.append((json.loads(attrs["data-hashed"]), attrs["data-hash"]))


def test_every_row_the_audit_page_shows_recomputes_to_its_hash(client, auditor, varied_entries):
    client.force_login(auditor)
    parser = _HashedSpans()
    parser.feed(client.get("/audit/").content.decode())
    assert len(parser.rows) >= 4
    for payload, hash_ in parser.rows:
        assert audit.compute_hash(payload) == hash_, payload["sequence"]
