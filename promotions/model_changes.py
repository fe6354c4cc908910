"""What changes in the model when a candidate replaces the current holder of a stage.

Read from both versions' MLmodel files and requirements (registry_sync.model_files): the
signature's columns, the flavours, the Python version and the pinned requirements. A change
that would break a caller of the model is flagged: an input column removed or retyped, an input
that becomes (or arrives) required, an output column removed or retyped. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from registry_sync.models import VersionModelFiles


@dataclass(frozen=True)
class ColumnChange:
    name: str
    change: str  # added | added, required | removed | type changed | now required | now optional
    before: str = ""
    after: str = ""
    breaking: bool = False


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    required: bool


@dataclass(frozen=True)
class ValueChange:
    """A flavour or a requirement: added (before ""), removed (after "") or changed."""

    name: str
    before: str
    after: str

    @property
    def change(self) -> str:
        if not self.before:
            return "added"
        return "removed" if not self.after else "changed"


@dataclass(frozen=True)
class FileChanges:
    """The candidate's files against the holder's (`holder` None: no version holds the stage)."""

    candidate: VersionModelFiles
    holder: VersionModelFiles | None
    inputs: list[ColumnChange] = field(default_factory=list)
    outputs: list[ColumnChange] = field(default_factory=list)
    # The candidate's own signature, shown when there is nothing to compare it with.
    candidate_inputs: list[Column] = field(default_factory=list)
    candidate_outputs: list[Column] = field(default_factory=list)
    signature_note: str = ""
    flavors: list[ValueChange] = field(default_factory=list)
    python: ValueChange | None = None
    requirements: list[ValueChange] = field(default_factory=list)

    @property
    def compared(self) -> bool:
        """Both signatures are known, so the columns were compared."""
        return self.holder is not None and self.holder.has_signature and self.candidate.has_signature

    @property
    def breaking(self) -> list[ColumnChange]:
        return [c for c in (*self.inputs, *self.outputs) if c.breaking]

    @property
    def unchanged(self) -> bool:
        return not (self.inputs or self.outputs or self.flavors or self.python or self.requirements)


def column_type(spec: dict) -> str:
    """A column spec's type as one short word: `double`, `array<string>`, `tensor float64 (-1, 4)`."""
    kind = str(spec.get("type", "?"))
    if kind == "tensor":
        tensor = spec.get("tensor-spec") or {}
        return f"tensor {tensor.get('dtype', '?')} {tuple(tensor.get('shape') or ())}"
    if kind == "array" and isinstance(spec.get("items"), dict):
        return f"array<{column_type(spec['items'])}>"
    if kind == "object" and isinstance(spec.get("properties"), dict):
        inner = ", ".join(f"{k}: {column_type(v)}" for k, v in sorted(spec["properties"].items()))
        return f"object{{{inner}}}"
    return kind


def columns(specs: list[dict] | None) -> list[Column]:
    """Named columns by name; a tensor or unnamed column by its position, `[0]`, `[1]`…"""
    return [
        Column(
            name=str(spec.get("name") or f"[{position}]"),
            type=column_type(spec),
            required=bool(spec.get("required", True)),
        )
        for position, spec in enumerate(specs or [])
    ]


def column_changes(old: list[dict] | None, new: list[dict] | None, *, inputs: bool) -> list[ColumnChange]:
    before = {c.name: c for c in columns(old)}
    after = {c.name: c for c in columns(new)}
    changes = []
    for name, column in after.items():
        previous = before.get(name)
        if previous is None:
            # A caller of the holder does not send a new input: breaking unless it is optional.
            required = inputs and column.required
            change = "added, required" if required else "added"
            changes.append(ColumnChange(name, change, after=column.type, breaking=required))
        elif previous.type != column.type:
            changes.append(ColumnChange(name, "type changed", previous.type, column.type, breaking=True))
        elif inputs and column.required and not previous.required:
            changes.append(ColumnChange(name, "now required", "optional", "required", breaking=True))
        elif inputs and previous.required and not column.required:
            changes.append(ColumnChange(name, "now optional", "required", "optional"))
    changes += [
        ColumnChange(name, "removed", before=column.type, breaking=True)
        for name, column in before.items()
        if name not in after
    ]
    return changes


def pinned_requirements(lines: list[str] | None) -> dict[str, str]:
    """requirements.txt lines -> {canonical name: specifier}; options (-r, -c…) and comments
    are skipped, and a line packaging cannot read is kept whole under its own text."""
    found: dict[str, str] = {}
    for raw in lines or []:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            found[line] = line
            continue
        found[canonicalize_name(requirement.name)] = str(requirement.specifier) or "(any version)"
    return found


def value_changes(old: dict[str, str], new: dict[str, str]) -> list[ValueChange]:
    return [
        ValueChange(name, old.get(name, ""), new.get(name, ""))
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    ]


def _flavors(files: VersionModelFiles) -> dict[str, str]:
    # A flavour naming no library version is still present: "" would read as absent.
    return {name: version or "present" for name, version in (files.flavors or {}).items()}


def file_changes(
    candidate: VersionModelFiles,
    holder: VersionModelFiles | None,
    *,
    candidate_number: int,
    holder_number: int | None = None,
) -> FileChanges:
    if holder is None:
        return FileChanges(
            candidate=candidate,
            holder=None,
            candidate_inputs=columns(candidate.inputs),
            candidate_outputs=columns(candidate.outputs),
            signature_note=""
            if candidate.has_signature
            else f"v{candidate_number} was logged without a signature.",
        )
    note = ""
    if not candidate.has_signature and not holder.has_signature:
        note = "Neither version was logged with a signature: their inputs cannot be compared."
    elif not candidate.has_signature:
        note = (
            f"v{candidate_number} was logged without a signature: "
            f"its inputs cannot be compared with v{holder_number}'s."
        )
    elif not holder.has_signature:
        note = f"v{holder_number} was logged without a signature: v{candidate_number}'s is shown alone."
    compared = candidate.has_signature and holder.has_signature
    python = None
    if candidate.python_version != holder.python_version:
        python = ValueChange("python", holder.python_version, candidate.python_version)
    return FileChanges(
        candidate=candidate,
        holder=holder,
        inputs=column_changes(holder.inputs, candidate.inputs, inputs=True) if compared else [],
        outputs=column_changes(holder.outputs, candidate.outputs, inputs=False) if compared else [],
        candidate_inputs=[] if compared else columns(candidate.inputs),
        candidate_outputs=[] if compared else columns(candidate.outputs),
        signature_note=note,
        flavors=value_changes(_flavors(holder), _flavors(candidate)),
        python=python,
        requirements=value_changes(
            pinned_requirements(holder.requirements), pinned_requirements(candidate.requirements)
        ),
    )
