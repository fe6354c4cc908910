"""The MLflow model files of mirrored versions: read once through the gateway, kept per version.

A request page asks for its candidate's and its target holder's files together: one query
reads both versions with whatever is cached, and only a version without a cached row costs
MLflow calls. A failure is returned, not stored, so the page can say why and the next view
tries again.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from django.db import IntegrityError, transaction
from django.utils import timezone

from registry_sync import gateway
from registry_sync.models import ModelVersion, VersionModelFiles
from registry_sync.selectors import versions_with_model_files

logger = logging.getLogger(__name__)


def version_model_files_fetch(*, version: ModelVersion, timeout: int | None = None) -> VersionModelFiles:
    """Read the version's files from MLflow and store them; raises gateway.RegistryError.
    `timeout`: seconds per MLflow call, when a person waits for the answer."""
    if not version.source:
        # MLflow gives every version a source; a mirror row without one has no files to read.
        raise gateway.VersionNotFound(
            f"Version {version.version} of model '{version.model.name}' names no artifacts."
        )
    files = gateway.get_model_files(
        version.model.name, version.version, run_id=version.run_id, timeout=timeout
    )
    row = VersionModelFiles(version=version, fetched_at=timezone.now(), **asdict(files))
    try:
        with transaction.atomic():
            row.save()
    except IntegrityError:
        # Another page view stored the same version's files first; they are the same files.
        return VersionModelFiles.objects.get(version=version)
    return row


def version_model_files_for(
    *, model_id: int, numbers: list[int], timeout: int | None = None
) -> dict[int, VersionModelFiles | gateway.RegistryError]:
    """Each wanted version number -> its files, or the gateway's error saying why they could
    not be read. A number the mirror does not have is left out."""
    found: dict[int, VersionModelFiles | gateway.RegistryError] = {}
    unreachable: gateway.RegistryError | None = None
    for version in versions_with_model_files(model_id=model_id, numbers=numbers):
        cached = getattr(version, "model_files", None)
        if cached is not None:
            found[version.version] = cached
        elif unreachable is not None:
            # MLflow just failed to answer for the other version: one timeout per page is enough.
            found[version.version] = unreachable
        else:
            try:
                found[version.version] = version_model_files_fetch(version=version, timeout=timeout)
            except gateway.RegistryError as exc:
                logger.info("model files of %s unread: %s", version, exc)
                found[version.version] = exc
                if isinstance(exc, (gateway.RegistryUnavailable, gateway.RegistryPermissionDenied)):
                    unreachable = exc
    return found
