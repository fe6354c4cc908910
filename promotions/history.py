"""Who held each stage and alias of a model, and when; which version held a stage at a time T.

Reads only, and only the record: never MLflow. The record of a binding change is one of

- an applied promotion request (`applied_at`, its version) with its `promotion.applied` audit
  entry: the binding it wrote then (`binding`), whom MLflow archived (`archived`), whom it
  displaced (`previous_holders`), who approved (`approved_by`);
- a drift event of the mirror: a change made in MLflow outside the workflow (kind `stage`: the
  version moved `before` → `after`; kind `alias`: the alias moved from version `before` to
  `after`, either possibly empty);
- a `registry.reverted` audit entry (a drift put back by the enforcement of a `revert` stage):
  the moves listed in its details' `restored`.

`intervals` is the pure part: changes in, holder intervals out. `model_history` and `holders_at`
are the query layer: a fixed number of queries whatever the number of changes (stages; applied
requests with their stage and version, and their reviews; audit entries; drift events).

How the changes are read: an alias has one holder, so a change of it ends the previous holder's
interval. A legacy stage may have several (a transition without `archive_existing` leaves the
others in place): an interval ends only when a change says that version left: it moved to
another legacy stage (a version has one), MLflow archived it, or a drift says so. What held a
binding before the record begins shows up only when a change says it left: its interval has no
start (`since` None, source `before_record`). Such an interval is never inferred where it
would overlap a known one (an alias already changed in the record, a version whose legacy stage
is already known).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db.models import Q

from promotions.models import AuditEvent, PromotionRequest, Stage
from registry_sync.models import DriftEvent, RegisteredModel

STAGE, ALIAS = "stage", "alias"
APPLIED_ACTION = "promotion.applied"
REVERTED_ACTION = "registry.reverted"  # recorded by the drift enforcement, when it reverts
ARCHIVED = "Archived"


@dataclass(frozen=True, order=True)
class Binding:
    """What MLflow binds: a legacy stage (`Production`) or an alias (`champion`)."""

    kind: str  # STAGE or ALIAS
    name: str

    @property
    def label(self) -> str:
        return f"stage {self.name}" if self.kind == STAGE else f"alias @{self.name}"


def stage_bindings(stage: Stage) -> list[Binding]:
    bindings = []
    if stage.mlflow_stage:
        bindings.append(Binding(STAGE, stage.mlflow_stage))
    if stage.mlflow_alias:
        bindings.append(Binding(ALIAS, stage.mlflow_alias))
    return bindings


@dataclass(frozen=True)
class Source:
    """How a version came to hold (or leave) a binding."""

    kind: str  # "request", "outside" (a drift event), "revert", "before_record"
    id: int | None = None  # the request id, the drift event id, the audit entry's sequence
    requested_by: str = ""
    approved_by: tuple[str, ...] = ()

    @property
    def request_id(self) -> int | None:
        return self.id if self.kind == "request" else None

    @property
    def drift_event_id(self) -> int | None:
        return self.id if self.kind == "outside" else None

    @property
    def audit_sequence(self) -> int | None:
        return self.id if self.kind == "revert" else None


BEFORE_RECORD = Source("before_record")


@dataclass(frozen=True)
class Change:
    """One change of one binding, at one time.

    `version` now holds `binding` (None: nobody new); the versions in `leaving` left it. With
    `displaces_all` every other holder left too (an alias always; a legacy stage transitioned
    with archive_existing), and moved to `displaced_to` if that is given (Archived).
    """

    at: datetime
    binding: Binding
    version: int | None
    source: Source
    leaving: frozenset[int] = frozenset()
    displaces_all: bool = False
    displaced_to: Binding | None = None
    order: tuple = ()  # ties at the same time: the order the record has them in


@dataclass(frozen=True)
class Interval:
    binding: Binding
    version: int
    since: datetime | None  # None: held before the record begins
    until: datetime | None  # None: holds it still (as far as the record knows)
    source: Source
    ended_by: Source | None = None

    def holds_at(self, moment: datetime) -> bool:
        started = self.since is None or self.since <= moment
        return started and (self.until is None or moment < self.until)


def intervals(changes: Iterable[Change]) -> list[Interval]:
    """Holder intervals of every binding the changes touch, by binding, then start, then version."""
    done: list[Interval] = []
    holding: dict[Binding, dict[int, tuple[datetime | None, Source]]] = defaultdict(dict)
    legacy_of: dict[int, Binding] = {}  # the legacy stage each version holds now
    legacy_known: set[int] = set()  # versions whose legacy stage the record has told
    touched: set[Binding] = set()  # bindings the record has changed already

    def end(binding: Binding, version: int, at: datetime, by: Source) -> None:
        held = holding[binding].pop(version, None)
        if held is not None:
            done.append(Interval(binding, version, held[0], at, held[1], by))
            if legacy_of.get(version) == binding:
                del legacy_of[version]
            return
        # Left without the record saying it came: it held the binding before the record began,
        # unless that would contradict what the record does say.
        if binding.kind == STAGE and version not in legacy_known:
            legacy_known.add(version)
        elif binding.kind == ALIAS and binding not in touched:
            touched.add(binding)
        else:
            return
        done.append(Interval(binding, version, None, at, BEFORE_RECORD, by))

    def start(binding: Binding, version: int, at: datetime, by: Source) -> None:
        touched.add(binding)
        if binding.kind == STAGE:
            legacy_known.add(version)
            current = legacy_of.get(version)
            if current == binding:
                return
            if current is not None:  # a version holds one legacy stage: it left the other
                end(current, version, at, by)
            legacy_of[version] = binding
        elif version in holding[binding]:
            return
        else:
            for other in list(holding[binding]):
                end(binding, other, at, by)
        holding[binding][version] = (at, by)

    for change in sorted(changes, key=lambda c: (c.at, c.order)):
        binding = change.binding
        leavers = set(change.leaving)
        if binding.kind == ALIAS or change.displaces_all:
            leavers |= set(holding[binding])
        leavers.discard(change.version)
        for version in sorted(leavers):
            end(binding, version, change.at, change.source)
            if change.displaced_to is not None:
                start(change.displaced_to, version, change.at, change.source)
        if change.version is not None:
            start(binding, change.version, change.at, change.source)
        touched.add(binding)

    for binding, holders in holding.items():
        for version, (since, source) in holders.items():
            done.append(Interval(binding, version, since, None, source))
    return sorted(done, key=_interval_order)


def _interval_order(interval: Interval) -> tuple:
    since = interval.since or datetime.min.replace(tzinfo=UTC)
    return (interval.binding, interval.since is not None, since, interval.version)


# --- from the rows ---------------------------------------------------------------------------


def parse_binding_label(label: str) -> list[Binding]:
    """`Stage.binding_label` as recorded in `promotion.applied`: "stage Production + alias @champion"."""
    bindings = []
    for part in (label or "").split(" + "):
        kind, _, name = part.strip().partition(" ")
        if kind == STAGE and name:
            bindings.append(Binding(STAGE, name))
        elif kind == ALIAS and name.startswith("@") and len(name) > 1:
            bindings.append(Binding(ALIAS, name[1:]))
    return bindings


def _numbers(values) -> frozenset[int]:
    if not isinstance(values, list | tuple):
        return frozenset()
    return frozenset(v for v in values if isinstance(v, int) and not isinstance(v, bool))


def _number(text) -> int | None:
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if isinstance(text, str) and text.strip().isdigit():
        return int(text)
    return None


def request_changes(request: PromotionRequest, entry: AuditEvent | None) -> list[Change]:
    """The binding changes an applied request made (its version, stage and reviews loaded)."""
    details = entry.details if entry is not None and isinstance(entry.details, dict) else {}
    approved_by = details.get("approved_by")
    if not isinstance(approved_by, list):
        approved_by = [
            r.reviewer_name for r in request.reviews.all() if r.decision == "approve" and not r.stale
        ]
    source = Source(
        "request",
        request.pk,
        requested_by=request.requested_by_name,
        approved_by=tuple(str(name) for name in approved_by),
    )
    bindings = parse_binding_label(details.get("binding", "")) or stage_bindings(request.stage)
    archived = _numbers(details.get("archived"))
    previous = _numbers(details.get("previous_holders"))
    alias_only = all(b.kind == ALIAS for b in bindings)
    sequence = entry.sequence if entry else 0
    changes = []
    for binding in bindings:
        if binding.kind == STAGE:
            archives = request.stage.archive_existing or bool(archived)
            how = {
                "leaving": archived,
                "displaces_all": request.stage.archive_existing,
                "displaced_to": Binding(STAGE, ARCHIVED) if archives else None,
                "order": (sequence, 0, request.pk),
            }
        else:
            # Recorded together with the stage's holders when the stage has both halves.
            how = {"leaving": previous if alias_only else frozenset(), "order": (sequence, 1, request.pk)}
        version = request.version.version
        changes.append(Change(at=request.applied_at, binding=binding, version=version, source=source, **how))
    return changes


def move_changes(
    *,
    at: datetime,
    kind: str,
    alias: str,
    before: str,
    after: str,
    version: int | None,
    source: Source,
    order,
) -> list[Change]:
    """A stage or alias move seen outside the workflow (a drift), or put back (a revert)."""
    if kind == STAGE:
        if version is None:
            return []
        changes = []
        if before:
            changes.append(
                Change(
                    at, Binding(STAGE, before), None, source, leaving=frozenset({version}), order=(*order, 0)
                )
            )
        if after:
            changes.append(Change(at, Binding(STAGE, after), version, source, order=(*order, 1)))
        return changes
    if kind == ALIAS and alias:
        old, new = _number(before), _number(after)
        leaving = frozenset({old}) if old is not None else frozenset()
        return [Change(at, Binding(ALIAS, alias), new, source, leaving=leaving, order=(*order, 0))]
    return []


def drift_changes(event: DriftEvent) -> list[Change]:
    return move_changes(
        at=event.detected_at,
        kind=event.kind,
        alias=event.alias,
        before=event.before,
        after=event.after,
        version=event.version,
        source=Source("outside", event.pk),
        order=(0, event.pk),
    )


def revert_changes(entry: AuditEvent) -> list[Change]:
    """The moves a `registry.reverted` entry made: its details' `restored` list, each
    `{"kind": "stage", "version", "from", "to"}` or `{"kind": "alias", "alias", "from", "to"}`
    (holders as version strings, "" for nobody). Entries that wrote nothing add no change."""
    details = entry.details if isinstance(entry.details, dict) else {}
    if details.get("outcome") != "reverted" or not isinstance(details.get("restored"), list):
        return []
    source = Source("revert", entry.sequence, requested_by=entry.actor_name)
    changes: list[Change] = []
    for number, move in enumerate(details["restored"]):
        if not isinstance(move, dict) or not all(isinstance(move.get(key), str) for key in ("from", "to")):
            continue
        version = move.get("version")
        changes.extend(
            move_changes(
                at=entry.created_at,
                kind=move.get("kind", ""),
                alias=move.get("alias", "") if isinstance(move.get("alias", ""), str) else "",
                before=move["from"],
                after=move["to"],
                version=version if isinstance(version, int) and not isinstance(version, bool) else None,
                source=source,
                order=(entry.sequence, number),
            )
        )
    return changes


def changes_from(requests, entries, drifts) -> list[Change]:
    """Every change of one model's record, from its rows."""
    applied_entry: dict[int, AuditEvent] = {}
    changes: list[Change] = []
    for entry in entries:
        if entry.action == APPLIED_ACTION and entry.request_id is not None:
            applied_entry[entry.request_id] = entry
        elif entry.action == REVERTED_ACTION:
            changes.extend(revert_changes(entry))
    for request in requests:
        changes.extend(request_changes(request, applied_entry.get(request.pk)))
    for event in drifts:
        changes.extend(drift_changes(event))
    return changes


# --- queries ---------------------------------------------------------------------------------

_ENTRY_FIELDS = (
    "sequence",
    "created_at",
    "actor_name",
    "action",
    "model_name",
    "version",
    "request_id",
    "details",
)


def _applied_requests():
    return (
        PromotionRequest.objects.filter(status=PromotionRequest.Status.APPLIED, applied_at__isnull=False)
        .select_related("stage", "version__model")
        .prefetch_related("reviews")
    )


def _entries():
    return AuditEvent.objects.filter(action__in=(APPLIED_ACTION, REVERTED_ACTION)).only(*_ENTRY_FIELDS)


@dataclass(frozen=True)
class HistoryEntry:
    stage: Stage
    interval: Interval

    @property
    def binding(self) -> Binding:
        return self.interval.binding


@dataclass
class Timeline:
    stage: Stage
    binding: Binding
    intervals: list[Interval] = field(default_factory=list)


@dataclass
class ModelHistory:
    model: RegisteredModel
    stages: list[Stage]
    timelines: list[Timeline]

    @property
    def entries(self) -> list[HistoryEntry]:
        return [HistoryEntry(t.stage, interval) for t in self.timelines for interval in t.intervals]


def model_history(model: RegisteredModel) -> ModelHistory:
    """Every holder change of every catalog stage of `model`: four queries and the prefetch."""
    stages = list(Stage.objects.order_by("position", "name"))
    requests = _applied_requests().filter(version__model=model)
    entries = _entries().filter(model_name=model.name)
    drifts = DriftEvent.objects.filter(model=model)
    by_binding: dict[Binding, list[Interval]] = defaultdict(list)
    for interval in intervals(changes_from(requests, entries, drifts)):
        by_binding[interval.binding].append(interval)
    timelines = [
        Timeline(stage, binding, by_binding.get(binding, []))
        for stage in stages
        for binding in stage_bindings(stage)
    ]
    return ModelHistory(model=model, stages=stages, timelines=timelines)


@dataclass(frozen=True)
class Holder:
    model_name: str
    interval: Interval


def holders_at(moment: datetime, stage: Stage) -> list[Holder]:
    """Which version of every model held `stage` at `moment`, by model name: one row a holder
    (a legacy stage may have several, a stage bound to a stage and an alias one of each).

    Only changes up to `moment` are read; every model's in four queries and the prefetch.
    """
    bindings = set(stage_bindings(stage))
    requests = _applied_requests().filter(applied_at__lte=moment)
    # An apply's audit entry is written a moment after its applied_at: join it by request.
    applied_ids = PromotionRequest.objects.filter(
        status=PromotionRequest.Status.APPLIED, applied_at__lte=moment
    ).values("pk")
    entries = _entries().filter(
        Q(action=APPLIED_ACTION, request_id__in=applied_ids)
        | Q(action=REVERTED_ACTION, created_at__lte=moment)
    )
    drifts = DriftEvent.objects.filter(detected_at__lte=moment).select_related("model")
    per_model: dict[str, tuple[list, list, list]] = defaultdict(lambda: ([], [], []))
    for request in requests:
        per_model[request.version.model.name][0].append(request)
    for entry in entries:
        per_model[entry.model_name][1].append(entry)
    for event in drifts:
        per_model[event.model.name][2].append(event)
    rows = []
    for model_name in sorted(per_model):
        for interval in intervals(changes_from(*per_model[model_name])):
            if interval.binding in bindings and interval.since is not None and interval.holds_at(moment):
                rows.append(Holder(model_name, interval))
    return rows


def parse_moment(text: str) -> datetime:
    """An ISO 8601 time with its timezone, as UTC. A time without one is refused, not guessed:
    the answer of "who held Production at 09:00" depends on whose 09:00."""
    text = (text or "").strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{text[:40]}' is not an ISO 8601 time; write e.g. 2026-03-01T09:00:00Z.") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"'{text[:40]}' has no timezone; add one, e.g. 2026-03-01T09:00:00Z or +02:00.")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"'{text[:40]}' is out of range.") from None
