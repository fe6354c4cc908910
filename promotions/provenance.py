"""The provenance tags a promotion leaves on a model version in MLflow: their keys and values.

Two kinds, written by the apply (`promotions.services.applying`) and copied by `bench/apply.py`:

- the latest promotion, overwritten by each one: `promotion.request_id`,
  `promotion.approved_by` (usernames, comma-separated, or "automatic"),
  `promotion.applied_at` and, when the request recorded the model's files,
  `promotion.artifact_sha256` (the manifest digest the approvals covered);
- one record per stage, kept when the version is promoted on: `promotion.stage.<stage>` holding
  compact JSON `{"request":12,"approved_by":["rita","sam"],"at":"…"}`. When a later promotion
  takes the stage from the version (its legacy stage archived, or the alias moved away), the
  record gains `"until"` and `"displaced_by"`, so it no longer says the version is there.

Before the records existed, one `promotion.stage` tag named the stage of the latest promotion.
"""

from __future__ import annotations

import json
import re
from typing import Any

REQUEST_ID = "promotion.request_id"
APPROVED_BY = "promotion.approved_by"
APPLIED_AT = "promotion.applied_at"
ARTIFACT_SHA256 = "promotion.artifact_sha256"
LEGACY_STAGE = "promotion.stage"
RECORD_PREFIX = "promotion.stage."
AUTOMATIC = "automatic"

# MLflow's tag keys allow word characters, "_", "-", ".", " ", "/" and ":" (not on Windows
# servers); a "/" is read as a path. Anything else in a stage name becomes "_".
_NOT_IN_TAG_KEY = re.compile(r"[^\w.\- ]")


def record_key(stage_name: str) -> str:
    """`promotion.stage.Production`, `promotion.stage.Bench Champion`; under its own prefix so that
    no stage name can overwrite one of the latest-promotion tags."""
    return RECORD_PREFIX + _NOT_IN_TAG_KEY.sub("_", stage_name)


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def promotion_tags(
    *, request_id: int, stage_name: str, approved_by: list[str], at: str, artifact_sha256: str | None = None
) -> dict[str, str]:
    """The tags of the promoted version (four, five with the files' digest), in the order they
    are written: the request id last, because an attempt that finds it in place takes the tags
    as written (see the apply's resume)."""
    tags = {
        record_key(stage_name): _dumps({"request": request_id, "approved_by": approved_by, "at": at}),
        APPROVED_BY: ",".join(approved_by) or AUTOMATIC,
        APPLIED_AT: at,
    }
    if artifact_sha256:
        tags[ARTIFACT_SHA256] = artifact_sha256
    tags[REQUEST_ID] = str(request_id)
    return tags


def parse_record(value: str | None) -> dict[str, Any] | None:
    """A stage record as written by `promotion_tags`; None when absent or not ours."""
    if not value:
        return None
    try:
        record = json.loads(value)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def displacement(
    tags: dict[str, str], *, stage_name: str, request_id: int, at: str
) -> tuple[str, str | None] | None:
    """What to write on a version that `request_id` takes `stage_name` from: (key, new value), or
    (key, None) to delete an old-format `promotion.stage` tag; None when nothing says it is there.

    Written again by a retry of the same request it changes nothing: the record already names it.
    """
    key = record_key(stage_name)
    record = parse_record(tags.get(key))
    if record is not None:
        if "until" in record:
            return None
        return key, _dumps({**record, "until": at, "displaced_by": request_id})
    if tags.get(LEGACY_STAGE) == stage_name:
        return LEGACY_STAGE, None
    return None
