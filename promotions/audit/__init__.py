"""The append-only, hash-chained audit log, as the rest of the project uses it.

A module a job: `actions` (every action recorded), `format` (the canonical row, its hash), `log`
(recording), `filters`, `exports` (files, manifests), `verify` (files and the database), `views` and
`urls` (auditors' pages; not imported here: recording needs no templates), `triggers` (append-only),
`signing` (the keyed MACs of the chain head, seals and manifests), `signatures` (reviewers'
signatures checked against the log).
"""

from common.operator import acting_from_cli
from promotions.audit.actions import AuditAction
from promotions.audit.format import GENESIS_HASH, canonical_json, compute_hash, payload_of, utc_iso
from promotions.audit.log import (
    acting_through_token,
    audit_context_middleware,
    chain_head,
    current_user,
    printed_name,
    record,
    record_denied,
    seal,
)
from promotions.audit.signatures import signature_problems
from promotions.audit.verify import ChainReport, record_verification, verify_database, verify_export

__all__ = [
    "GENESIS_HASH",
    "AuditAction",
    "ChainReport",
    "acting_from_cli",
    "acting_through_token",
    "audit_context_middleware",
    "canonical_json",
    "chain_head",
    "compute_hash",
    "current_user",
    "payload_of",
    "printed_name",
    "record",
    "record_denied",
    "record_verification",
    "seal",
    "signature_problems",
    "utc_iso",
    "verify_database",
    "verify_export",
]
