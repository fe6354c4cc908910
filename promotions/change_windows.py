"""Deployment windows and freezes: when an approved request may be applied to MLflow.

A stage may list weekly windows ("Mon–Thu 09:00–16:00") read in its IANA time zone, and
freezes (from, until, reason). An approved request is applied only inside a window (no window:
any time) and outside every freeze; otherwise it waits as Scheduled until `next_opening`.

All arithmetic is on aware datetimes through zoneinfo. A window is the span of real time from
the first moment the stage's clock shows its start to the first moment it shows its end: on the
day clocks spring forward a start inside the skipped hour opens when the clock jumps past it;
on the day they fall back a time inside the repeated hour is its first occurrence. So a window
is never empty because of a time change, and never opens twice on one day.

The functions on windows and freezes are pure (a test hands them any `now`); `apply_hold` reads
the stage's freezes and is what the services and the worker call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from promotions.models import Freeze

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_INDEX = {name.lower(): index for index, name in enumerate(DAYS)}
_DASH = "[-–—]"
_WINDOW = re.compile(
    rf"^(?P<days>[A-Za-z]{{3}}(?:\s*{_DASH}\s*[A-Za-z]{{3}})?(?:\s*,\s*[A-Za-z]{{3}}(?:\s*{_DASH}\s*[A-Za-z]{{3}})?)*)"
    rf"\s+(?P<starts>\d{{1,2}}:\d{{2}})\s*{_DASH}\s*(?P<ends>\d{{1,2}}:\d{{2}})$"
)
# A search for the next opening gives up after this many steps (each step passes one window or
# one freeze): only a catalog with thousands of back-to-back freezes could reach it.
_MAX_STEPS = 2000


class WindowError(ValueError):
    """A window or time zone a stage admin wrote that cannot be read; the text says why."""


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    starts: time
    ends: time | None  # None: the end of the day (24:00)

    @property
    def label(self) -> str:
        ends = "24:00" if self.ends is None else self.ends.strftime("%H:%M")
        return f"{_days_label(self.days)} {self.starts.strftime('%H:%M')}–{ends}"


@dataclass(frozen=True)
class Period:
    """A freeze: nothing is applied from `starts_at` until `ends_at` (aware datetimes)."""

    starts_at: datetime
    ends_at: datetime
    reason: str = ""


@dataclass(frozen=True)
class Hold:
    """Why an approved request may not be applied now, and from when it may.

    `until` is the next opening (None: no opening within reach); `frozen_until` and `reason`
    describe the freeze in force when `kind` is FROZEN.
    """

    kind: str
    until: datetime | None
    time_zone: str
    frozen_until: datetime | None = None
    reason: str = ""
    windows: str = ""  # the windows in words, "Mon–Thu 09:00–16:00"

    OUTSIDE_WINDOW = "outside window"
    FROZEN = "frozen"

    @property
    def sentence(self) -> str:
        """The hold in words, without the part relative to now (kept on the request)."""
        zone = zone_get(self.time_zone)
        if self.kind == self.FROZEN and self.frozen_until is not None:
            text = f"Frozen until {self.frozen_until.astimezone(zone).strftime('%-d %b %H:%M %Z')}"
            return f"{text}: {self.reason}" if self.reason else text
        if self.windows:
            return f"Outside the stage's deployment windows ({self.windows}, {self.time_zone} time)"
        return "Outside the stage's deployment windows"


def zone_get(name: str) -> ZoneInfo:
    """The IANA time zone `name`; WindowError when there is none of that name."""
    # zoneinfo reads a file of that name: no path tricks, and nothing it cannot name.
    if not isinstance(name, str) or not name.strip() or len(name) > 64 or ".." in name or name[:1] == "/":
        raise WindowError(f"'{str(name)[:64]}' is not an IANA time zone (e.g. Europe/Berlin, UTC).")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"'{name[:64]}' is not an IANA time zone (e.g. Europe/Berlin, UTC).") from None


def _days_label(days: frozenset[int]) -> str:
    """Mon–Thu, Sat; runs of three or more days as a range."""
    ordered, runs, run = sorted(days), [], []
    for day in ordered:
        if run and day == run[-1] + 1:
            run.append(day)
        else:
            if run:
                runs.append(run)
            run = [day]
    if run:
        runs.append(run)
    parts = []
    for run in runs:
        if len(run) >= 3:
            parts.append(f"{DAYS[run[0]]}–{DAYS[run[-1]]}")
        else:
            parts.extend(DAYS[day] for day in run)
    return ", ".join(parts)


def _day(name: str) -> int:
    index = _DAY_INDEX.get(name.lower())
    if index is None:
        raise WindowError(f"'{name}' is not a day; write Mon, Tue, Wed, Thu, Fri, Sat or Sun.")
    return index


def _clock(text: str, *, end: bool) -> time | None:
    hours, minutes = (int(part) for part in text.split(":"))
    if end and (hours, minutes) == (24, 0):
        return None
    if not (0 <= hours <= 23 and 0 <= minutes <= 59):
        raise WindowError(f"'{text}' is not a time of day (00:00 to 23:59, or 24:00 for an end).")
    return time(hours, minutes)


def parse_window(line: str) -> Window:
    """'Mon–Thu 09:00–16:00', 'Sat, Sun 10:00-12:00', 'Fri-Mon 00:00-24:00' (ranges may wrap)."""
    text = " ".join(line.split())
    match = _WINDOW.match(text)
    if match is None:
        raise WindowError(f"'{text[:80]}' is not a window: write days and times, e.g. 'Mon–Thu 09:00–16:00'.")
    days: set[int] = set()
    for part in match["days"].split(","):
        ends = re.split(_DASH, part)
        first, last = _day(ends[0].strip()), _day(ends[-1].strip())
        day = first
        days.add(day)
        while day != last:
            day = (day + 1) % 7
            days.add(day)
    starts, ends = _clock(match["starts"], end=False), _clock(match["ends"], end=True)
    if ends is not None and ends <= starts:
        raise WindowError(
            f"'{text[:80]}': a window ends after it starts on the same day "
            "(split a night across two windows, e.g. 'Mon 22:00–24:00' and 'Tue 00:00–02:00')."
        )
    return Window(days=frozenset(days), starts=starts, ends=ends)


def parse_windows(text: str) -> list[Window]:
    """One window a line; WindowError names every line that cannot be read."""
    windows, errors = [], []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        try:
            windows.append(parse_window(line))
        except WindowError as exc:
            errors.append(str(exc))
    if errors:
        raise WindowError("; ".join(errors))
    return windows


def first_instant(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """The first moment (UTC) at which the clock of `zone` shows `wall` or later on `day`."""
    earlier = datetime.combine(day, wall, zone)
    later = earlier.replace(fold=1)
    shown = datetime.combine(day, wall)
    candidates = [c for c in (earlier, later) if _reads(c.astimezone(UTC), zone) == shown]
    if candidates:
        return min(c.astimezone(UTC) for c in candidates)
    # `wall` falls in a gap (the clock springs forward over it): the moment of the jump, found
    # between the two readings zoneinfo gives a skipped time (offset before, offset after).
    low, high = sorted((earlier.astimezone(UTC), later.astimezone(UTC)))
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if _reads(middle, zone) >= shown:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def _reads(moment: datetime, zone: ZoneInfo) -> datetime:
    """What the clock of `zone` shows at `moment` (naive)."""
    return moment.astimezone(zone).replace(tzinfo=None, fold=0)


def window_spans(
    windows: list[Window], zone: ZoneInfo, around: datetime, *, days_before: int = 1, days_after: int = 8
) -> list[tuple[datetime, datetime]]:
    """The windows' spans in real time (UTC), over the local days around `around`, in order."""
    today = around.astimezone(zone).date()
    spans = []
    for offset in range(-days_before, days_after + 1):
        day = today + timedelta(days=offset)
        for window in windows:
            if day.weekday() not in window.days:
                continue
            starts = first_instant(day, window.starts, zone)
            if window.ends is None:
                ends = first_instant(day + timedelta(days=1), time(0), zone)
            else:
                ends = first_instant(day, window.ends, zone)
            spans.append((starts, ends))
    return sorted(spans)


def next_opening(
    windows: list[Window], zone: ZoneInfo, freezes: list[Period], now: datetime
) -> datetime | None:
    """The first moment at or after `now` inside a window (any, when there is none) and outside
    every freeze; None when none is within reach."""
    candidate = now.astimezone(UTC)
    for _ in range(_MAX_STEPS):
        freeze = next((f for f in freezes if f.starts_at <= candidate < f.ends_at), None)
        if freeze is not None:
            candidate = freeze.ends_at.astimezone(UTC)
            continue
        if not windows:
            return candidate
        spans = window_spans(windows, zone, candidate)
        if any(starts <= candidate < ends for starts, ends in spans):
            return candidate
        later = [starts for starts, _ in spans if starts > candidate]
        if not later:
            return None
        candidate = later[0]
    return None


def hold_at(windows: list[Window], time_zone: str, freezes: list[Period], now: datetime) -> Hold | None:
    """Why nothing may be applied at `now` (None: it may)."""
    zone = zone_get(time_zone)
    opening = next_opening(windows, zone, freezes, now)
    if opening is not None and opening <= now:
        return None
    freeze = next((f for f in freezes if f.starts_at <= now < f.ends_at), None)
    if freeze is not None:
        return Hold(
            kind=Hold.FROZEN,
            until=opening,
            time_zone=time_zone,
            frozen_until=freeze.ends_at,
            reason=freeze.reason,
        )
    labels = "; ".join(window.label for window in windows)
    return Hold(kind=Hold.OUTSIDE_WINDOW, until=opening, time_zone=time_zone, windows=labels)


def stage_windows(stage) -> list[Window]:
    """The stage's windows; a stored line that no longer reads (never saved so) is left out."""
    windows = []
    for line in (stage.deployment_windows or "").splitlines():
        if line.strip():
            try:
                windows.append(parse_window(line))
            except WindowError:
                continue
    return windows


def stage_zone_name(stage) -> str:
    try:
        zone_get(stage.window_time_zone)
    except WindowError:
        return "UTC"
    return stage.window_time_zone


def apply_hold(
    stage, now: datetime, *, freezes: list[Period] | None = None, windows: bool = True
) -> Hold | None:
    """What holds an approved request to `stage` back at `now`, or None when it may be applied.

    The last approval and the beat's release ask it; the worker's claim asks with
    `windows=False`: a request released when its window opened goes ahead even if the worker
    reaches it after the window closed, but nothing goes ahead during a freeze. A path that must
    not wait (an emergency change) simply does not ask.
    """
    if freezes is None:
        freezes = [
            Period(starts_at=f.starts_at, ends_at=f.ends_at, reason=f.reason)
            for f in Freeze.objects.filter(stage_id=stage.pk, ends_at__gt=now).order_by("starts_at")
        ]
    hold = hold_at(stage_windows(stage), stage_zone_name(stage), freezes, now)
    if hold is not None and not windows and hold.kind != Hold.FROZEN:
        return None
    return hold


def local_label(moment: datetime, time_zone: str, now: datetime) -> str:
    """'Tue 09:00 CET' within the coming week, 'Tue 12 Jan 09:00 CET' beyond."""
    local = moment.astimezone(zone_get(time_zone))
    if timedelta(0) <= moment - now < timedelta(days=6):
        return local.strftime("%a %H:%M %Z")
    return local.strftime("%a %-d %b %H:%M %Z")


def relative(moment: datetime, now: datetime) -> str:
    """'in 14 h', 'in 5 min', 'in 3 days', 'now' (its largest unit only)."""
    seconds = int((moment - now).total_seconds())
    if seconds <= 0:
        return "now"
    if seconds < 60:
        return "in under a minute"
    if seconds < 3600:
        return f"in {seconds // 60} min"
    if seconds < 48 * 3600:
        return f"in {seconds // 3600} h"
    return f"in {seconds // 86400} days"


def schedule_sentence(scheduled_for: datetime | None, time_zone: str, now: datetime) -> str:
    """'Applies at Tue 09:00 CET (in 14 h)'."""
    if scheduled_for is None:
        return "Applies when the stage's windows and freezes next allow it"
    if scheduled_for <= now:
        return "Applies now: the worker picks it up within one beat interval"
    return f"Applies at {local_label(scheduled_for, time_zone, now)} ({relative(scheduled_for, now)})"


def describe_windows(stage) -> str:
    """The stage's windows in plain words, for the catalog page ('' when it has none)."""
    windows = stage_windows(stage)
    if not windows:
        return ""
    labels = "; ".join(window.label for window in windows)
    return f"{labels} ({stage_zone_name(stage)} time)"
