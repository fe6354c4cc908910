"""Lead times of promotions per stage and ISO week, for the auditors' dashboard.

Computed in Python from two bounded queries over the last WEEKS weeks (only the columns needed):

- applied requests (`applied_at` in the window): the count, request → approval (`created_at` →
  `decided_at`) and approval → applied (`decided_at` → `applied_at`), by the week of `applied_at`;
- `promotion.failed` audit entries in the window, by the week they were written. Failures come
  from the log rather than from request status because a retried request that then succeeded
  no longer says it failed; the log keeps every failed attempt.

Failure rate = failed / (applied + failed). Percentiles interpolate linearly between ranks (as
`statistics.quantiles(method="inclusive")`, numpy's default).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.utils import timezone

from promotions.models import AuditEvent, PromotionRequest, Stage

WEEKS = 26

CHART_WIDTH = 640
CHART_HEIGHT = 200
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 8, 26, 28
_UNITS = (("s", 1), ("min", 60), ("h", 3600), ("d", 86400))


@dataclass(frozen=True)
class Spread:
    median: float | None  # seconds
    p90: float | None

    @property
    def median_text(self) -> str:
        return human_duration(self.median)

    @property
    def p90_text(self) -> str:
        return human_duration(self.p90)


@dataclass(frozen=True)
class WeekStats:
    week: str  # ISO week, e.g. "2026-W47"
    starts: date  # its Monday
    applied: int
    failed: int
    to_approval: Spread
    to_applied: Spread

    @property
    def failure_rate(self) -> float | None:
        attempts = self.applied + self.failed
        return self.failed / attempts if attempts else None

    @property
    def failure_rate_text(self) -> str:
        rate = self.failure_rate
        return "—" if rate is None else f"{rate:.0%}"


@dataclass(frozen=True)
class Bar:
    css: str
    x: str
    y: str
    width: str
    height: str
    label: str


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    bars: list[Bar]
    gridlines: list[tuple[str, str]]  # (y, label)
    week_labels: list[tuple[str, str]]  # (x, label)
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT
    plot_left: int = _LEFT
    plot_right: int = CHART_WIDTH - _RIGHT
    baseline: str = f"{CHART_HEIGHT - _BOTTOM}"
    label_y: str = f"{CHART_HEIGHT - 8}"


@dataclass(frozen=True)
class StageStats:
    stage: str
    weeks: list[WeekStats]  # weeks with data, oldest first
    charts: list[Chart] = field(default_factory=list)

    @property
    def applied(self) -> int:
        return sum(week.applied for week in self.weeks)

    @property
    def failed(self) -> int:
        return sum(week.failed for week in self.weeks)


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(fraction * 100) - 1]


def _spread(values: list[float]) -> Spread:
    if not values:
        return Spread(None, None)
    return Spread(float(statistics.median(values)), percentile(values, 0.9))


def _monday(moment: datetime) -> date:
    day = moment.astimezone(UTC).date()
    return day - timedelta(days=day.weekday())


def _iso_week(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


@dataclass
class _Bucket:
    applied: int = 0
    failed: int = 0
    to_approval: list[float] = field(default_factory=list)
    to_applied: list[float] = field(default_factory=list)


def lead_times(*, weeks: int = WEEKS, now: datetime | None = None) -> list[StageStats]:
    """Per stage (catalog order), the weeks of the last `weeks` ISO weeks that had promotions."""
    first_monday = _monday(now or timezone.now()) - timedelta(weeks=weeks - 1)
    since = datetime.combine(first_monday, time.min, tzinfo=UTC)
    mondays = [first_monday + timedelta(weeks=i) for i in range(weeks)]
    buckets: dict[str, dict[date, _Bucket]] = defaultdict(lambda: defaultdict(_Bucket))

    applied = PromotionRequest.objects.filter(
        status=PromotionRequest.Status.APPLIED, applied_at__gte=since
    ).values_list("stage__name", "created_at", "decided_at", "applied_at")
    for stage, created_at, decided_at, applied_at in applied:
        bucket = buckets[stage][_monday(applied_at)]
        bucket.applied += 1
        if decided_at is not None:
            bucket.to_approval.append((decided_at - created_at).total_seconds())
            bucket.to_applied.append((applied_at - decided_at).total_seconds())
    failures = AuditEvent.objects.filter(action="promotion.failed", created_at__gte=since).values_list(
        "to_stage", "created_at"
    )
    for stage, created_at in failures:
        buckets[stage][_monday(created_at)].failed += 1

    order = {name: index for index, name in enumerate(Stage.objects.values_list("name", flat=True))}
    result = []
    for stage in sorted(buckets, key=lambda name: (order.get(name, len(order)), name)):
        by_week = buckets[stage]
        stats = [
            WeekStats(
                week=_iso_week(monday),
                starts=monday,
                applied=bucket.applied,
                failed=bucket.failed,
                to_approval=_spread(bucket.to_approval),
                to_applied=_spread(bucket.to_applied),
            )
            for monday, bucket in sorted(by_week.items())
        ]
        slots = [next((s for s in stats if s.starts == monday), None) for monday in mondays]
        charts = [
            _duration_chart("Request → approval", slots, lambda s: s.to_approval, mondays),
            _duration_chart("Approval → applied", slots, lambda s: s.to_applied, mondays),
            _rate_chart(slots, mondays),
        ]
        result.append(StageStats(stage=stage, weeks=stats, charts=charts))
    return result


# --- charts: geometry only; the template draws the SVG ----------------------------------------


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 × 10^k at or above `value` (axes read better on round numbers)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power + 1e-12:
            return step * power
    return 10 * power


def _unit_for(seconds: float) -> tuple[str, int]:
    if seconds < 120:
        return _UNITS[0]
    if seconds < 2 * 3600:
        return _UNITS[1]
    if seconds < 2 * 86400:
        return _UNITS[2]
    return _UNITS[3]


def _fmt(number: float) -> str:
    return f"{number:.1f}"


def _axis(top: float, unit: str) -> tuple[float, list[tuple[str, str]]]:
    plot_height = CHART_HEIGHT - _TOP - _BOTTOM
    lines = []
    for fraction in (0, 0.5, 1):
        y = CHART_HEIGHT - _BOTTOM - fraction * plot_height
        value = top * fraction
        label = f"{value:g} {unit}".strip()
        lines.append((_fmt(y), label))
    return plot_height, lines


def _week_labels(mondays: list[date]) -> list[tuple[str, str]]:
    slot = (CHART_WIDTH - _LEFT - _RIGHT) / len(mondays)
    last = len(mondays) - 1
    # every fourth week, and the current one unless that would crowd the label before it
    return [
        (_fmt(_LEFT + (i + 0.5) * slot), f"W{monday.isocalendar()[1]:02d}")
        for i, monday in enumerate(mondays)
        if i % 4 == 0 or (i == last and last % 4 > 2)
    ]


def _duration_chart(title: str, slots, spread_of, mondays: list[date]) -> Chart:
    spreads = [spread_of(s) if s else None for s in slots]
    highest = max((sp.p90 or sp.median or 0 for sp in spreads if sp), default=0)
    unit, scale = _unit_for(highest)
    top = _nice_ceiling(highest / scale)
    plot_height, gridlines = _axis(top, unit)
    slot = (CHART_WIDTH - _LEFT - _RIGHT) / len(slots)
    bars = []
    for i, (week, spread) in enumerate(zip(slots, spreads, strict=True)):
        if week is None or spread.median is None:
            continue
        for offset, css, name, value in (
            (0.1, "bar", "median", spread.median),
            (0.5, "bar bar--p90", "p90", spread.p90),
        ):
            height = plot_height * (value / scale) / top
            bars.append(
                Bar(
                    css=css,
                    x=_fmt(_LEFT + (i + offset) * slot),
                    y=_fmt(CHART_HEIGHT - _BOTTOM - height),
                    width=_fmt(slot * 0.4),
                    height=_fmt(height),
                    label=f"{week.week}: {name} {human_duration(value)}",
                )
            )
    return Chart(title=title, unit=unit, bars=bars, gridlines=gridlines, week_labels=_week_labels(mondays))


def _rate_chart(slots, mondays: list[date]) -> Chart:
    rates = [s.failure_rate if s else None for s in slots]
    # at least 0-10 %: a week with one failure in a hundred should not look like a wall
    top = min(100.0, max(10.0, _nice_ceiling(max((r * 100 for r in rates if r), default=0))))
    plot_height, gridlines = _axis(top, "%")
    slot = (CHART_WIDTH - _LEFT - _RIGHT) / len(slots)
    bars = []
    for i, (week, rate) in enumerate(zip(slots, rates, strict=True)):
        if week is None or rate is None:
            continue
        height = plot_height * rate * 100 / top
        bars.append(
            Bar(
                css="bar bar--fail",
                x=_fmt(_LEFT + (i + 0.2) * slot),
                y=_fmt(CHART_HEIGHT - _BOTTOM - height),
                width=_fmt(slot * 0.6),
                height=_fmt(height),
                label=f"{week.week}: {week.failure_rate_text} failed "
                f"({week.failed} of {week.applied + week.failed} attempts)",
            )
        )
    return Chart(
        title="Failure rate", unit="%", bars=bars, gridlines=gridlines, week_labels=_week_labels(mondays)
    )
