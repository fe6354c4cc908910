"""What a registry sync announces, for the apps above the mirror to act on.

The mirror knows what changed in MLflow, not why: whether a change is a promotion of ours or
drift is for the app that files promotions to decide. It connects receivers to these signals.
"""

from __future__ import annotations

from django.dispatch import Signal

# Sent once per sync that changed mirror versions, after all its writes and the SyncRun's save
# (on a failed sync too: the pages written before the failure stand), with sender=SyncRun and:
#   run          the SyncRun (saved, with its counts)
#   version_ids  frozenset of changed ModelVersion primary keys (updated or marked deleted)
versions_changed = Signal()

# Sent for each change of a binding seen by a sync, inside the transaction that writes the
# page it was seen on, with sender=RegisteredModel and the fields of a DriftEvent:
#   model             the RegisteredModel
#   version           the version number concerned (for an alias: its new holder, else its old one)
#   kind              DriftEvent.Kind.STAGE (a legacy stage changed) or DriftEvent.Kind.ALIAS
#   alias             the alias (empty for a stage change)
#   before, after     the stage names, or the alias holders as version strings ("" for nobody)
#   mlflow_timestamp  MLflow's last_updated_timestamp of the version (stage) or model (alias)
# A receiver that records the change as drift returns a truthy value (the DriftEvent); the
# sync counts a change as drift when any receiver did, for SyncRun.drift.
binding_changed = Signal()
