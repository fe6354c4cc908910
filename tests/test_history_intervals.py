"""history.intervals: binding changes in, holder intervals out (no database)."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promotions.history import ALIAS, STAGE, Binding, Change, Source, intervals

pytestmark = pytest.mark.once  # pure: no database, no broker

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
PRODUCTION, STAGING, ARCHIVED = (
    Binding(STAGE, "Production"),
    Binding(STAGE, "Staging"),
    Binding(STAGE, "Archived"),
)
CHAMPION = Binding(ALIAS, "champion")


def at(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


def request(pk: int) -> Source:
    return Source("request", pk, requested_by="Riley", approved_by=("Rex", "Rita"))


def held(result, binding):
    return [(i.version, i.since, i.until, i.source.kind, i.source.id) for i in result if i.binding == binding]


def test_a_promotion_with_archive_existing_ends_the_previous_holder_and_archives_it():
    result = intervals(
        [
            Change(at(1), PRODUCTION, 1, request(10), displaces_all=True, displaced_to=ARCHIVED),
            Change(at(2), PRODUCTION, 2, request(11), displaces_all=True, displaced_to=ARCHIVED),
        ]
    )
    assert held(result, PRODUCTION) == [(1, at(1), at(2), "request", 10), (2, at(2), None, "request", 11)]
    assert held(result, ARCHIVED) == [(1, at(2), None, "request", 11)]


def test_without_archive_existing_several_versions_hold_a_legacy_stage():
    result = intervals([Change(at(1), STAGING, 1, request(10)), Change(at(2), STAGING, 2, request(11))])
    assert held(result, STAGING) == [(1, at(1), None, "request", 10), (2, at(2), None, "request", 11)]


def test_a_version_holds_one_legacy_stage_so_moving_on_ends_the_last():
    result = intervals(
        [
            Change(at(1), STAGING, 5, request(10)),
            Change(at(2), PRODUCTION, 5, request(11), displaces_all=True, displaced_to=ARCHIVED),
        ]
    )
    assert held(result, STAGING) == [(5, at(1), at(2), "request", 10)]
    assert held(result, PRODUCTION) == [(5, at(2), None, "request", 11)]


def test_an_alias_has_one_holder():
    outside = Source("outside", 7)
    result = intervals(
        [
            Change(at(1), CHAMPION, 1, request(10)),
            Change(at(2), CHAMPION, 2, outside, leaving=frozenset({1})),
            Change(at(3), CHAMPION, None, Source("outside", 8), leaving=frozenset({2})),
        ]
    )
    assert held(result, CHAMPION) == [(1, at(1), at(2), "request", 10), (2, at(2), at(3), "outside", 7)]


def test_a_holder_from_before_the_record_has_no_start():
    result = intervals(
        [Change(at(1), PRODUCTION, 2, request(10), leaving=frozenset({1}), displaced_to=ARCHIVED)]
    )
    assert held(result, PRODUCTION) == [
        (1, None, at(1), "before_record", None),
        (2, at(1), None, "request", 10),
    ]


def test_the_same_change_recorded_twice_changes_nothing_more():
    change = Change(at(1), CHAMPION, 3, request(10))
    assert intervals([change, change]) == intervals([change])


# --- properties ------------------------------------------------------------------------------

BINDINGS = [PRODUCTION, STAGING, ARCHIVED, CHAMPION, Binding(ALIAS, "challenger")]
versions = st.integers(min_value=1, max_value=5)


@st.composite
def changes(draw):
    binding = draw(st.sampled_from(BINDINGS))
    archive = binding.kind == STAGE and draw(st.booleans())
    return Change(
        at=T0 + timedelta(minutes=draw(st.integers(min_value=0, max_value=30))),
        binding=binding,
        version=draw(st.one_of(st.none(), versions)),
        source=draw(st.sampled_from([request(1), request(2), Source("outside", 3), Source("revert", 4)])),
        leaving=frozenset(draw(st.sets(versions, max_size=2))),
        displaces_all=archive,
        displaced_to=ARCHIVED if archive else None,
        order=(draw(st.integers(min_value=0, max_value=1000)),),
    )


def _overlap(a, b) -> bool:
    lowest = datetime.min.replace(tzinfo=UTC)
    highest = datetime.max.replace(tzinfo=UTC)
    a_since, a_until = a.since or lowest, a.until or highest
    b_since, b_until = b.since or lowest, b.until or highest
    return a_since < b_until and b_since < a_until


@settings(max_examples=300, deadline=None)
@given(st.lists(changes(), max_size=25))
def test_intervals_of_an_alias_never_overlap(record):
    result = intervals(record)
    for binding in (b for b in BINDINGS if b.kind == ALIAS):
        mine = [i for i in result if i.binding == binding]
        assert not [(a, b) for a in mine for b in mine if a is not b and _overlap(a, b)]


@settings(max_examples=300, deadline=None)
@given(st.lists(changes(), max_size=25))
def test_a_version_never_holds_two_legacy_stages_at_once(record):
    result = [i for i in intervals(record) if i.binding.kind == STAGE]
    for version in range(1, 6):
        mine = [i for i in result if i.version == version]
        assert not [(a, b) for a in mine for b in mine if a is not b and _overlap(a, b)]


@settings(max_examples=300, deadline=None)
@given(st.lists(changes(), max_size=25))
def test_every_change_is_reflected(record):
    result = intervals(record)
    for interval in result:
        assert interval.since is None or interval.until is None or interval.since <= interval.until
    for change in record:
        if change.version is None:
            continue
        # The version held the binding from the change on, until a later change (or one at the
        # same time, recorded after it) moved it.
        assert any(
            i.binding == change.binding
            and i.version == change.version
            and (i.since is None or i.since <= change.at)
            and (i.until is None or i.until >= change.at)
            for i in result
        ), change


@settings(max_examples=200, deadline=None)
@given(st.lists(changes(), max_size=25))
def test_what_holds_at_the_end_matches_a_replay(record):
    """Against a plain replay of the same rules over sets."""
    holders: dict[Binding, set[int]] = {b: set() for b in BINDINGS}
    for change in sorted(record, key=lambda c: (c.at, c.order)):
        current = holders[change.binding]
        leavers = set(change.leaving)
        if change.binding.kind == ALIAS or change.displaces_all:
            leavers |= current
        leavers.discard(change.version)

        def enter(binding, version):
            if binding.kind == STAGE:
                for other in BINDINGS:
                    if other.kind == STAGE and other != binding:
                        holders[other].discard(version)
            else:
                holders[binding].clear()
            holders[binding].add(version)

        for version in leavers:
            current.discard(version)
            if change.displaced_to is not None:
                enter(change.displaced_to, version)
        if change.version is not None:
            enter(change.binding, change.version)
    result = intervals(record)
    for binding in BINDINGS:
        assert {i.version for i in result if i.binding == binding and i.until is None} == holders[binding]
