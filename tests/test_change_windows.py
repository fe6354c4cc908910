"""Deployment windows and freezes as arithmetic: next openings across time changes, in words."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promotions.change_windows import (
    Hold,
    Period,
    WindowError,
    first_instant,
    hold_at,
    next_opening,
    parse_window,
    parse_windows,
    relative,
    schedule_sentence,
    window_spans,
    zone_get,
)

pytestmark = pytest.mark.once  # pure: no database, no broker

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_window_reads_days_and_times_in_several_spellings():
    assert parse_window("Mon–Thu 09:00–16:00").label == "Mon–Thu 09:00–16:00"
    assert parse_window("mon-thu 9:00-16:00").label == "Mon–Thu 09:00–16:00"
    assert parse_window("Sat, Sun 10:00-12:00").label == "Sat, Sun 10:00–12:00"
    assert parse_window("Fri-Mon 00:00-24:00").label == "Mon, Fri–Sun 00:00–24:00"


@pytest.mark.parametrize(
    "line",
    ["Mon 16:00-09:00", "Mon 09:00-09:00", "Funday 09:00-10:00", "Mon 25:00-26:00", "every day", "Mon 9-10"],
)
def test_it_refuses_a_window_it_cannot_read(line):
    with pytest.raises(WindowError):
        parse_window(line)


def test_it_names_every_line_it_cannot_read():
    with pytest.raises(WindowError, match="Funday.*every day"):
        parse_windows("Mon 09:00-10:00\nFunday 09:00-10:00\n\nevery day")


@pytest.mark.parametrize("name", ["Europe/Berlin", "UTC", "America/New_York"])
def test_it_knows_iana_zones(name):
    assert zone_get(name).key == name


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../../etc/passwd", "/etc/localtime", "x" * 200])
def test_it_refuses_what_is_not_an_iana_zone(name):
    with pytest.raises(WindowError):
        zone_get(name)


def test_outside_the_window_the_next_opening_is_the_next_weekday_start():
    windows = parse_windows("Mon–Thu 09:00–16:00")
    # Thursday 2027-03-04 17:00 in Berlin (CET, UTC+1): next is Monday 09:00 CET.
    now = utc(2027, 3, 4, 16, 0)
    assert next_opening(windows, BERLIN, [], now) == utc(2027, 3, 8, 8, 0)
    # Inside a window: now.
    inside = utc(2027, 3, 8, 10, 0)
    assert next_opening(windows, BERLIN, [], inside) == inside


def test_without_windows_it_is_always_open_except_during_a_freeze():
    now = utc(2027, 12, 10, 12, 0)
    freeze = Period(
        starts_at=utc(2027, 12, 10, 0, 0), ends_at=utc(2027, 12, 12, 17, 0), reason="year-end close"
    )
    assert next_opening([], BERLIN, [], now) == now
    assert next_opening([], BERLIN, [freeze], now) == freeze.ends_at


def test_a_freeze_that_ends_outside_a_window_waits_for_the_next_window():
    windows = parse_windows("Mon–Fri 09:00–16:00")
    # Frozen until Friday 2027-12-10 18:00 CET: the next window is Monday 13 Dec 09:00 CET.
    freeze = Period(starts_at=utc(2027, 12, 6, 0, 0), ends_at=utc(2027, 12, 10, 17, 0), reason="close")
    hold = hold_at(windows, "Europe/Berlin", [freeze], utc(2027, 12, 8, 10, 0))
    assert hold.kind == Hold.FROZEN
    assert hold.until == utc(2027, 12, 13, 8, 0)
    assert hold.sentence == "Frozen until 10 Dec 18:00 CET: close"


def test_spring_forward_a_window_starting_in_the_skipped_hour_opens_when_the_clock_jumps():
    # Berlin, Sunday 2027-03-28: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    windows = parse_windows("Sun 02:30–03:30")
    spans = window_spans(windows, BERLIN, utc(2027, 3, 28, 0, 0), days_before=0, days_after=0)
    assert spans == [(utc(2027, 3, 28, 1, 0), utc(2027, 3, 28, 1, 30))]
    assert next_opening(windows, BERLIN, [], utc(2027, 3, 27, 23, 0)) == utc(2027, 3, 28, 1, 0)
    # The week after, the same window is a full hour of CEST.
    assert next_opening(windows, BERLIN, [], utc(2027, 3, 28, 2, 0)) == utc(2027, 4, 4, 0, 30)


def test_spring_forward_a_morning_window_opens_at_its_local_time_in_summer_time():
    windows = parse_windows("Sun 09:00–16:00")
    assert next_opening(windows, BERLIN, [], utc(2027, 3, 28, 0, 0)) == utc(2027, 3, 28, 7, 0)
    assert next_opening(windows, BERLIN, [], utc(2027, 3, 21, 0, 0)) == utc(2027, 3, 21, 8, 0)


def test_fall_back_a_window_in_the_repeated_hour_opens_at_its_first_occurrence():
    # Berlin, Sunday 2027-10-31: 03:00 CEST falls back to 02:00 CET (01:00 UTC); 02:30 happens twice.
    windows = parse_windows("Sun 02:30–03:30")
    spans = window_spans(windows, BERLIN, utc(2027, 10, 31, 0, 0), days_before=0, days_after=0)
    # From the first 02:30 (CEST, 00:30 UTC) to 03:30 CET (02:30 UTC): two hours of real time.
    assert spans == [(utc(2027, 10, 31, 0, 30), utc(2027, 10, 31, 2, 30))]
    assert next_opening(windows, BERLIN, [], utc(2027, 10, 30, 22, 0)) == utc(2027, 10, 31, 0, 30)


def test_fall_back_an_afternoon_window_opens_at_its_local_time_in_winter_time():
    windows = parse_windows("Sun 09:00–16:00")
    assert next_opening(windows, BERLIN, [], utc(2027, 10, 31, 0, 0)) == utc(2027, 10, 31, 8, 0)


def test_a_us_zone_changes_on_its_own_dates():
    # New York springs forward on 2027-03-14 at 02:00 EST (07:00 UTC) to 03:00 EDT.
    assert first_instant(
        datetime(2027, 3, 14).date(), parse_window("Sun 02:15-04:00").starts, NEW_YORK
    ) == utc(2027, 3, 14, 7, 0)
    windows = parse_windows("Mon–Fri 09:00–17:00")
    assert next_opening(windows, NEW_YORK, [], utc(2027, 3, 13, 0, 0)) == utc(2027, 3, 15, 13, 0)
    assert next_opening(windows, NEW_YORK, [], utc(2027, 3, 6, 0, 0)) == utc(2027, 3, 8, 14, 0)


def test_a_window_to_midnight_ends_at_the_next_days_first_instant():
    windows = parse_windows("Sat 22:00–24:00")
    spans = window_spans(windows, BERLIN, utc(2027, 3, 27, 12, 0), days_before=0, days_after=0)
    assert spans == [(utc(2027, 3, 27, 21, 0), utc(2027, 3, 27, 23, 0))]


def test_the_sentence_says_the_local_time_and_how_long_until_then():
    now = utc(2027, 3, 8, 18, 0)  # Monday 19:00 CET
    assert (
        schedule_sentence(utc(2027, 3, 9, 8, 0), "Europe/Berlin", now) == "Applies at Tue 09:00 CET (in 14 h)"
    )
    assert schedule_sentence(utc(2027, 3, 20, 8, 0), "Europe/Berlin", now).startswith(
        "Applies at Sat 20 Mar 09:00 CET"
    )
    assert relative(now + timedelta(minutes=5), now) == "in 5 min"
    assert relative(now + timedelta(days=3), now) == "in 3 days"


WINDOW_LINES = st.sampled_from(
    ["Mon–Thu 09:00–16:00", "Sun 02:30–03:30", "Sat, Sun 10:00–12:00", "Fri 23:00–24:00", "Tue 00:00–00:30"]
)
ZONES = st.sampled_from(["Europe/Berlin", "America/New_York", "UTC", "Australia/Lord_Howe", "Asia/Kolkata"])
MOMENTS = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2029, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(WINDOW_LINES, min_size=1, max_size=3),
    zone=ZONES,
    now=MOMENTS,
    freezes=st.lists(st.tuples(st.integers(-72, 24 * 20), st.integers(1, 24 * 10)), max_size=3),
)
def test_the_next_opening_is_never_before_now_always_in_a_window_and_never_in_a_freeze(
    lines, zone, now, freezes
):
    windows = parse_windows("\n".join(lines))
    periods = [
        Period(starts_at=now + timedelta(hours=start), ends_at=now + timedelta(hours=start + length))
        for start, length in freezes
    ]
    tz = ZoneInfo(zone)
    opening = next_opening(windows, tz, periods, now)
    assert opening is not None
    assert opening >= now
    assert not any(p.starts_at <= opening < p.ends_at for p in periods)
    assert any(start <= opening < end for start, end in window_spans(windows, tz, opening))
    # And the local clock then reads a time inside one of the windows.
    local = opening.astimezone(tz)
    assert any(
        local.weekday() in w.days and w.starts <= local.time().replace(second=0, microsecond=0)
        for w in windows
    ) or any(start == opening for start, _ in window_spans(windows, tz, opening))
