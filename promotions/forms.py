from __future__ import annotations

import re

from django import forms

from promotions import catalog
from promotions.models import MAX_TEXT, Stage
from registry_sync.models import ModelVersion, RegisteredModel

# Row ids and version numbers fit PostgreSQL's integer; ten digits cover them.
MAX_NUMBER = 2**31 - 1
# ASCII only: str.isdigit() also accepts "²" and "٣", which int() then refuses.
_NUMBER = re.compile(r"[0-9]{1,10}")


def parse_number(value: object, *, name: str) -> int:
    """A whole number from 1 to MAX_NUMBER sent by a form or a link; ValidationError says why not."""
    text = value.strip() if isinstance(value, str) else ""
    if not _NUMBER.fullmatch(text) or not 1 <= int(text) <= MAX_NUMBER:
        shown = text[:20] + ("…" if len(text) > 20 else "")
        raise forms.ValidationError(
            f"The {name} must be a whole number from 1 to {MAX_NUMBER}, not '{shown}'."
        )
    return int(text)


def parse_optional_number(value: object, *, name: str) -> int | None:
    """As parse_number, with None for a value left empty or not sent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return parse_number(value, name=name)


def parse_text(value: object, *, name: str, max_length: int) -> str:
    """Free text from a query string, trimmed: no NUL (PostgreSQL stores none) and bounded."""
    text = value.strip() if isinstance(value, str) else ""
    if "\x00" in text:
        raise forms.ValidationError(f"The {name} contains a NUL character.")
    if len(text) > max_length:
        raise forms.ValidationError(f"The {name} is longer than {max_length} characters.")
    return text


class PromotionRequestForm(forms.Form):
    """Model, version and target stage narrow each other: only moves the catalog allows."""

    model = forms.ChoiceField(label="Model")
    version = forms.TypedChoiceField(label="Version", coerce=int, empty_value=None)
    stage = forms.ChoiceField(label="Target stage")
    justification = forms.CharField(
        label="Justification",
        widget=forms.Textarea(
            attrs={"rows": 4, "placeholder": "Why should this version move? Evidence, tickets…"}
        ),
        max_length=MAX_TEXT,
        required=False,
    )

    def __init__(
        self, *args, model_name: str = "", version_number: int | None = None, rollback: bool = False, **kwargs
    ):
        super().__init__(*args, **kwargs)
        names = (
            RegisteredModel.objects.filter(is_deleted=False).order_by("name").values_list("name", flat=True)
        )
        self.fields["model"].choices = [("", "Choose a model…")] + [(n, n) for n in names]
        self.chosen_version: ModelVersion | None = None
        versions = []
        if model_name:
            versions = list(
                ModelVersion.objects.filter(model__name=model_name, is_deleted=False)
                .select_related("model")
                .order_by("-version")
            )
        self.fields["version"].choices = [("", "Choose a version…")] + [
            (v.version, f"v{v.version} — {v.current_stage}{' @' + ' @'.join(v.aliases) if v.aliases else ''}")
            for v in versions
        ]
        self.chosen_version = next((v for v in versions if v.version == version_number), None)
        stages = list(Stage.objects.filter(is_active=True).prefetch_related("allowed_from"))
        if self.chosen_version is not None:
            positions = catalog.version_positions(
                current_stage=self.chosen_version.current_stage,
                aliases=self.chosen_version.aliases,
                stages=stages,
            )
            # A rollback returns a previous holder to its stage, wherever it stands now; the
            # filing service checks the record and refuses (and audits) any other "rollback".
            stages = [
                s
                for s in stages
                if s.name not in positions and (rollback or catalog.transition_allowed(s, positions))
            ]
        self.fields["stage"].choices = [("", "Choose a stage…")] + [(s.name, s.name) for s in stages]
        self.allowed_stages = stages

    def clean_justification(self) -> str:
        text = self.cleaned_data["justification"].strip()
        if not text:
            raise forms.ValidationError("A justification is required: say why this version should move.")
        return text


class DecisionForm(forms.Form):
    comment = forms.CharField(
        label="Comment", widget=forms.Textarea(attrs={"rows": 3}), max_length=MAX_TEXT, required=False
    )
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    evidence_sha256 = forms.CharField(required=False, widget=forms.HiddenInput)
    # On stages that require a signature (services/signatures.py checks all three): what the
    # approval means, the reviewer's password, and the form's one-time token. Free text here: a
    # meaning the stage does not offer is refused, and audited, by the service.
    meaning = forms.CharField(label="Meaning of your signature", max_length=200, required=False)
    password = forms.CharField(
        label="Password", strip=False, max_length=4096, required=False, widget=forms.PasswordInput
    )
    signature_token = forms.CharField(max_length=1000, required=False, widget=forms.HiddenInput)
