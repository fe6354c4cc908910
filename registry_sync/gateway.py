"""The one place that talks to MLflow.

Everything else in the product calls these functions and receives our own small dataclasses,
or one of our own exceptions. MLflow's own environment variables for credentials and TLS
(MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN, MLFLOW_TRACKING_INSECURE_TLS, ...) are read by
the MLflow client itself and therefore honoured as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import yaml
from django.conf import settings

from common.redact import redact

# Our callers retry with their own policy (Celery backoff, the next sync run); MLflow's
# built-in retry loop would otherwise hold a web request or a worker for minutes when the
# server is down. Both stay overridable from the environment.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
# The client would otherwise report usage to MLflow's servers; this product talks to the
# registry only.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.MLFLOW_TIMEOUT_SECONDS))

import mlflow  # noqa: E402
import mlflow.artifacts  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag, ViewType  # noqa: E402
from mlflow.exceptions import MlflowException, RestException  # noqa: E402
from mlflow.store.artifact.artifact_repo import ArtifactRepository  # noqa: E402
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository  # noqa: E402
from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository  # noqa: E402
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository  # noqa: E402
from mlflow.utils.rest_utils import augmented_raise_for_status, http_request  # noqa: E402

LEGACY_STAGES = ("None", "Staging", "Production", "Archived")
_STATUS_IN_MESSAGE = re.compile(
    # urllib3 names a status it gave up on as "too many 503 error responses"
    r"(?:error code|status code|HTTP) (\d{3})|too many (\d{3}) error responses",
    re.IGNORECASE,
)
_TIMED_OUT = re.compile(r"timed? ?out|ReadTimeout|ConnectTimeout", re.IGNORECASE)


class RegistryError(Exception):
    """Base class: the registry refused or could not serve a call.

    `str(error)` is a sentence a reviewer understands ("MLflow at http://mlflow:5000 is not
    answering"); `detail` is the library's own text for whoever debugs it. Both are redacted.
    """

    def __init__(self, message: str = "", detail: str = ""):
        super().__init__(message)
        self.detail = detail


class RegistryUnavailable(RegistryError):
    """Connection refused, timeout or a 5xx: worth retrying later."""


class RegistryPermissionDenied(RegistryError):
    """401 or 403: retrying will not help until credentials change."""


class ModelNotFound(RegistryError):
    pass


class VersionNotFound(RegistryError):
    pass


class RegistryRejected(RegistryError):
    """MLflow refused the call's arguments (an invalid alias, an unknown stage...)."""


class ArtifactsUnreadable(RegistryError):
    """The version's model files cannot be read as they are: none, one missing, or a store that
    refuses to be read. Retrying will not help until someone fixes the artifacts."""


@dataclass(frozen=True)
class RegisteredModelInfo:
    name: str
    description: str
    tags: dict[str, str]
    aliases: dict[str, int]
    creation_timestamp: int | None
    last_updated_timestamp: int | None


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: int
    current_stage: str
    status: str
    run_id: str
    source: str
    description: str
    tags: dict[str, str]
    aliases: list[str]
    creation_timestamp: int | None
    last_updated_timestamp: int | None
    user_id: str = ""  # who MLflow says created the version ("" when it records nobody)


@dataclass(frozen=True)
class RunData:
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    user: str = ""  # who ran it: the run's mlflow.user tag, else its user_id


def _run_data(run) -> RunData:
    user = run.data.tags.get("mlflow.user") or run.info.user_id or ""
    # MLflow's client writes "unknown" when it was told no user: that names nobody.
    user = "" if user == "unknown" else user
    return RunData(metrics=dict(run.data.metrics), params=dict(run.data.params), user=user)


def _client() -> MlflowClient:
    uri = settings.MLFLOW_TRACKING_URI
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _registry():
    """MLflow's registry client under MlflowClient, for writes (and the download URI read).

    MlflowClient reads the registered model (`registered-models/get`) before each write to
    refuse prompts, which doubles the calls of a promotion (a transition and four tags: ten
    calls instead of five). The apply path has already read the version with MLflow's search or
    `get_model_version`, which leave prompts out, so it writes through the registry client
    directly. This is MLflow's private `_get_registry_client()`; tests/test_apply.py pins the
    calls, so an MLflow upgrade that moves it fails there.
    """
    return _client()._get_registry_client()


def tracking_uri() -> str:
    """The registry's address as it may be shown: without the credentials a URL may carry."""
    return redact(settings.MLFLOW_TRACKING_URI)


def tracking_host() -> str:
    """The tracking URI as people may see it: scheme, host and port, never `user:password@`."""
    parts = urlsplit(settings.MLFLOW_TRACKING_URI)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def _without_userinfo(text: str) -> str:
    # MLflow's messages quote the URL they called, credentials included.
    return _USERINFO.sub("", text)


def _http_status(exc: MlflowException) -> int | None:
    if isinstance(exc, RestException):
        code = exc.get_http_status_code()
        if code and code != 500:
            return code
    match = _STATUS_IN_MESSAGE.search(str(exc))
    return int(match.group(1) or match.group(2)) if match else None


def _translate(exc: Exception, *, name: str | None = None, version: int | None = None) -> RegistryError:
    """Map an MLflow or HTTP failure to one of our exceptions (returned, for `raise ... from`).

    The sentence and the raw text are redacted here, once: both are stored (sync runs, a
    request's last error, the audit log), logged and shown, and MLflow's messages may quote the
    URL with its credentials.
    """
    error = _classify(exc, name=name, version=version)
    raw = f"{type(exc).__name__}: {exc}" if isinstance(exc, requests.RequestException) else str(exc)
    return type(error)(redact(str(error)), detail=redact(_without_userinfo(raw))[:_DETAIL_LIMIT])


_DETAIL_LIMIT = 4000


def _classify(exc: Exception, *, name: str | None, version: int | None) -> RegistryError:
    host = tracking_host()
    if isinstance(exc, requests.Timeout):
        return RegistryUnavailable(f"MLflow at {host} did not answer in time.")
    if isinstance(exc, requests.ConnectionError):
        return RegistryUnavailable(f"MLflow at {host} is not answering.")
    if not isinstance(exc, MlflowException):
        return RegistryUnavailable(f"The call to MLflow at {host} failed.")
    status = _http_status(exc)
    error_code = getattr(exc, "error_code", "")
    message = exc.message if hasattr(exc, "message") else str(exc)
    if status in (401, 403) or error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return RegistryPermissionDenied(f"MLflow at {host} refused the credentials (HTTP {status or 403}).")
    if error_code == "RESOURCE_DOES_NOT_EXIST" or status == 404:
        if version is not None:
            return VersionNotFound(f"Version {version} of model '{name}' does not exist in MLflow.")
        return ModelNotFound(f"Model '{name}' does not exist in MLflow.")
    if error_code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE") or (
        status is not None and 400 <= status < 500
    ):
        # MLflow's own words say what it refused (an invalid alias...): they are the sentence.
        return RegistryRejected(_without_userinfo(message))
    if status is not None and status >= 500:
        return RegistryUnavailable(f"MLflow at {host} answered with an error (HTTP {status}).")
    # Connection refused and timeouts arrive as a generic MlflowException quoting urllib3.
    if _TIMED_OUT.search(message):
        return RegistryUnavailable(f"MLflow at {host} did not answer in time.")
    return RegistryUnavailable(f"MLflow at {host} is not answering.")


def _model_info(model) -> RegisteredModelInfo:
    aliases = {alias: int(version) for alias, version in (model.aliases or {}).items()}
    return RegisteredModelInfo(
        name=model.name,
        description=model.description or "",
        tags=dict(model.tags or {}),
        aliases=aliases,
        creation_timestamp=model.creation_timestamp,
        last_updated_timestamp=model.last_updated_timestamp,
    )


def _version_info(mv) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=int(mv.version),
        current_stage=mv.current_stage or "None",
        status=mv.status or "",
        run_id=mv.run_id or "",
        source=mv.source or "",
        description=mv.description or "",
        tags=dict(mv.tags or {}),
        aliases=sorted(mv.aliases or []),
        creation_timestamp=mv.creation_timestamp,
        last_updated_timestamp=mv.last_updated_timestamp,
        user_id=mv.user_id or "",
    )


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ping() -> None:
    """Raise RegistryUnavailable / RegistryPermissionDenied unless MLflow answers."""
    try:
        _client().search_registered_models(max_results=1)
    except Exception as exc:  # noqa: BLE001 - every failure is translated
        raise _translate(exc) from exc


def _search_pages(search, convert, *, name: str | None, page_size: int) -> Iterator[list]:
    """Page through one of MlflowClient's searches (models or versions), one model or all."""
    filter_string = f"name = {_quote(name)}" if name else None
    token = None
    while True:
        try:
            page = search(filter_string=filter_string, max_results=page_size, page_token=token)
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, name=name) from exc
        yield [convert(item) for item in page]
        token = page.token
        if not token:
            return


def iter_registered_model_pages(
    *, name: str | None = None, page_size: int = 1000
) -> Iterator[list[RegisteredModelInfo]]:
    return _search_pages(
        lambda **page: _client().search_registered_models(**page), _model_info, name=name, page_size=page_size
    )


def iter_model_version_pages(
    *, name: str | None = None, page_size: int = 10000
) -> Iterator[list[ModelVersionInfo]]:
    return _search_pages(
        lambda **page: _client().search_model_versions(**page), _version_info, name=name, page_size=page_size
    )


def get_model_version(name: str, version: int) -> ModelVersionInfo:
    try:
        return _version_info(_client().get_model_version(name, str(version)))
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, name=name, version=version) from exc


def get_registered_model(name: str) -> RegisteredModelInfo:
    try:
        return _model_info(_client().get_registered_model(name))
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, name=name) from exc


def get_version_by_alias(name: str, alias: str) -> ModelVersionInfo | None:
    try:
        return _version_info(_client().get_model_version_by_alias(name, alias))
    except Exception as exc:  # noqa: BLE001
        error = _translate(exc, name=name)
        if isinstance(error, (ModelNotFound, VersionNotFound, RegistryRejected)):
            return None
        raise error from exc


def get_run_data(run_id: str) -> RunData:
    if not run_id:
        return RunData()
    try:
        run = _client().get_run(run_id)
    except Exception as exc:  # noqa: BLE001
        error = _translate(exc)
        if isinstance(error, (ModelNotFound, VersionNotFound)):
            return RunData()  # the run was deleted; the version still exists
        raise error from exc
    return _run_data(run)


# --- the version's model files ---------------------------------------------------------------


@dataclass(frozen=True)
class ModelFiles:
    """What a version's `MLmodel` (and its requirements) say, parsed; column specs as MLflow
    writes them ({"name", "type", "required"}, or a tensor spec), None when no signature."""

    flavors: dict[str, str]  # flavor -> the library version it names ("" when none)
    inputs: list[dict] | None
    outputs: list[dict] | None
    python_version: str
    mlflow_version: str
    requirements: list[str] | None  # requirements.txt lines; None when the model has none
    run_name: str
    experiment_id: str


def _signature_part(signature: dict, key: str) -> list[dict] | None:
    raw = signature.get(key)
    if not raw:
        return None
    value = json.loads(raw) if isinstance(raw, str) else raw
    return [dict(item) for item in value] if isinstance(value, list) else None


def _parse_mlmodel(text: str) -> dict:
    document = yaml.safe_load(text) or {}
    if not isinstance(document, dict):
        raise ValueError("MLmodel is not a YAML mapping")
    flavors = document.get("flavors") or {}
    signature = document.get("signature") or {}
    return {
        "flavors": {
            str(name): str((spec or {}).get(f"{name}_version", "")) if isinstance(spec, dict) else ""
            for name, spec in flavors.items()
        },
        "inputs": _signature_part(signature, "inputs"),
        "outputs": _signature_part(signature, "outputs"),
        "python_version": str(((flavors.get("python_function") or {}).get("python_version")) or ""),
        "mlflow_version": str(document.get("mlflow_version") or ""),
    }


def _read_model_files(name: str, version: int, *, run_id: str, uri: str):
    """The parsed MLmodel, the requirements.txt lines (None when absent), and the run (or None).

    One listing of the model's directory, then each small file on its own: python_env.yaml only
    when MLmodel names no Python version (MLflow writes it in both).
    """
    # The registry client: MlflowClient would read the registered model first (see _registry).
    location = _registry().get_model_version_download_uri(name, str(version)).rstrip("/")
    present = {
        Path(item.path).name
        for item in mlflow.artifacts.list_artifacts(artifact_uri=location, tracking_uri=uri)
        if not item.is_dir
    }
    if "MLmodel" not in present:
        raise VersionNotFound(f"Version {version} of model '{name}' has no MLmodel file in its artifacts.")
    with tempfile.TemporaryDirectory(prefix="model-files-") as scratch:

        def text(file_name: str) -> str:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/{file_name}", dst_path=scratch, tracking_uri=uri
            )
            return Path(local).read_text(encoding="utf-8", errors="replace")

        try:
            parsed = _parse_mlmodel(text("MLmodel"))
            if not parsed["python_version"] and "python_env.yaml" in present:
                python_env = yaml.safe_load(text("python_env.yaml")) or {}
                if isinstance(python_env, dict):
                    parsed["python_version"] = str(python_env.get("python") or "")
        except (yaml.YAMLError, ValueError) as exc:
            raise RegistryRejected(
                f"The MLmodel file of version {version} of '{name}' is not valid YAML.",
                detail=redact(str(exc))[:_DETAIL_LIMIT],
            ) from exc
        requirements = text("requirements.txt").splitlines() if "requirements.txt" in present else None
    return parsed, requirements, (_client().get_run(run_id) if run_id else None)


@contextmanager
def _request_timeout(seconds: int | None) -> Iterator[None]:
    """MLflow's client reads its HTTP timeout from the environment at each call and takes no
    per-call argument. Only the web's request page passes one, and gunicorn's sync workers run
    one request at a time, so setting it around one read touches no other call. The worker's
    threads never pass one: they share the process's environment."""
    if seconds is None:
        yield
        return
    saved = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(seconds)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_TIMEOUT", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = saved


def get_model_files(name: str, version: int, *, run_id: str = "", timeout: int | None = None) -> ModelFiles:
    """The version's MLmodel and requirements.txt (never the model itself), and its run's name.

    VersionNotFound when the version or its MLmodel is missing, RegistryRejected when the
    MLmodel cannot be read. `timeout` (seconds per call) overrides MLFLOW_TIMEOUT_SECONDS, for
    a page that waits.
    """
    try:
        with _request_timeout(timeout):
            parsed, requirements, run = _read_model_files(
                name, version, run_id=run_id, uri=settings.MLFLOW_TRACKING_URI
            )
    except RegistryError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, name=name, version=version) from exc
    return ModelFiles(
        **parsed,
        requirements=requirements,
        run_name=(run.info.run_name or "") if run else "",
        experiment_id=str(run.info.experiment_id) if run else "",
    )


# --- the version's artifact manifest ---------------------------------------------------------

MANIFEST_CHUNK = 4 * 1024 * 1024  # bytes read and hashed at a time: memory stays flat per file
MLMODEL = "MLmodel"


@dataclass(frozen=True)
class ManifestFile:
    path: str  # relative to the version's artifact location, "/"-separated
    size: int
    sha256: str | None  # None only in a quick manifest, for a large file it did not read


@dataclass(frozen=True)
class Manifest:
    """Every file under a version's model artifacts, sorted by path.

    `digest` covers each file's path, size and SHA-256; it is defined for a full manifest only
    (a quick one leaves large files unhashed and is compared file by file instead).
    """

    files: tuple[ManifestFile, ...]
    mode: str  # "full" or "quick"

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.files)

    @property
    def digest(self) -> str:
        return manifest_digest([(item.path, item.size, item.sha256 or "") for item in self.files])


def manifest_digest(files: list[tuple[str, int, str]] | list[list]) -> str:
    """SHA-256 over the sorted "path\\0size\\0sha256\\n" lines: the one definition, used for
    the manifest computed now and for the one stored on a request."""
    lines = sorted(f"{path}\0{int(size)}\0{sha256}\n" for path, size, sha256 in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _walk_artifacts(repo, path: str | None = None) -> Iterator[tuple[str, int | None]]:
    for item in repo.list_artifacts(path):
        if item.is_dir:
            yield from _walk_artifacts(repo, item.path)
        else:
            yield item.path, item.file_size


def _hash_stream(chunks) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _read_chunks(handle) -> Iterator[bytes]:
    while chunk := handle.read(MANIFEST_CHUNK):
        yield chunk


def _hash_artifact(repo, path: str) -> tuple[str, int]:
    """SHA-256 and size of one artifact, streamed: a local store's file read in place, a served
    store's (`mlflow-artifacts:`, http) response body hashed as it arrives; any other store
    (S3, GCS, ...) downloaded to a scratch file that is hashed and deleted at once."""
    if isinstance(repo, LocalArtifactRepository):
        with open(os.path.join(repo.artifact_dir, *path.split("/")), "rb") as handle:
            return _hash_stream(_read_chunks(handle))
    if isinstance(repo, HttpArtifactRepository):
        # What HttpArtifactRepository._download_file does, hashing instead of writing a file.
        response = http_request(repo._host_creds, posixpath.join("/", path), "GET", stream=True)
        try:
            augmented_raise_for_status(response)
            return _hash_stream(response.iter_content(chunk_size=MANIFEST_CHUNK))
        finally:
            response.close()
    with tempfile.TemporaryDirectory(prefix="manifest-") as scratch:
        local = os.path.join(scratch, "file")
        repo._download_file(path, local)
        with open(local, "rb") as handle:
            return _hash_stream(_read_chunks(handle))


def _artifact_error(exc: Exception, *, name: str, version: int, path: str | None) -> RegistryError:
    """Our error for a failure while listing (`path` None) or reading one file of the manifest."""
    subject = (
        f"The file {path} of version {version} of '{name}' is"
        if path
        else f"The artifacts of version {version} of '{name}' are"
    )
    detail = redact(_without_userinfo(f"{type(exc).__name__}: {exc}"))[:_DETAIL_LIMIT]
    if isinstance(exc, FileNotFoundError):
        return ArtifactsUnreadable(f"{subject} missing from the artifact store.", detail=detail)
    if isinstance(exc, OSError) and not isinstance(exc, requests.RequestException):
        return ArtifactsUnreadable(f"{subject} not readable in the artifact store.", detail=detail)
    error = _translate(exc, name=name, version=version)
    if isinstance(error, (VersionNotFound, ModelNotFound)) and path:
        return ArtifactsUnreadable(f"{subject} missing from the artifact store.", detail=error.detail)
    if isinstance(error, RegistryRejected) or not isinstance(
        exc, (MlflowException, requests.RequestException)
    ):
        # A store MLflow's client cannot open (a scheme without its library, a bad location).
        return ArtifactsUnreadable(f"{subject} not readable in the artifact store.", detail=detail)
    return error


def artifact_manifest(
    name: str, version: int, *, mode: str = "full", small_file_bytes: int = 1024 * 1024
) -> Manifest:
    """The manifest of every file under the version's model artifacts, one file at a time.

    `mode="quick"` reads the sizes of all files from the store's listing and hashes only the
    files of at most `small_file_bytes` and MLflow's MLmodel. Raises ArtifactsUnreadable when
    the version has no files, a listed file is missing, or the store cannot be read;
    RegistryUnavailable / RegistryPermissionDenied as every other call.
    """
    uri = settings.MLFLOW_TRACKING_URI
    try:
        location = _registry().get_model_version_download_uri(name, str(version))
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, name=name, version=version) from exc
    path = None
    try:
        repo = get_artifact_repository(location, tracking_uri=uri, registry_uri=uri)
        # `runs:/` and `models:/` locations wrap the store that holds the files (`.repo`, the
        # same paths): read that one, so a served store is streamed, not copied to scratch.
        while isinstance(getattr(repo, "repo", None), ArtifactRepository):
            repo = repo.repo
        listed = sorted(_walk_artifacts(repo))
        if not listed:
            raise ArtifactsUnreadable(
                f"Version {version} of model '{name}' has no files in its artifacts ({redact(location)})."
            )
        files = []
        for path, listed_size in listed:
            quick_skip = (
                mode == "quick"
                and listed_size is not None
                and listed_size > small_file_bytes
                and posixpath.basename(path) != MLMODEL
            )
            if quick_skip:
                files.append(ManifestFile(path, listed_size, None))
                continue
            sha256, size = _hash_artifact(repo, path)
            files.append(ManifestFile(path, size, sha256))
    except RegistryError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is translated
        raise _artifact_error(exc, name=name, version=version, path=path) from exc
    return Manifest(files=tuple(files), mode=mode)


def ui_base_url() -> str:
    """MLflow's UI as people open it: MLFLOW_UI_URL, else the tracking URI without credentials."""
    configured = settings.MLFLOW_UI_URL
    if configured:
        return configured.rstrip("/")
    parts = urlsplit(settings.MLFLOW_TRACKING_URI)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def ui_version_url(name: str, version: int) -> str:
    return f"{ui_base_url()}/#/models/{quote(name, safe='')}/versions/{int(version)}"


def ui_run_url(experiment_id: str, run_id: str) -> str:
    return f"{ui_base_url()}/#/experiments/{quote(experiment_id, safe='')}/runs/{quote(run_id, safe='')}"


def transition_stage(name: str, version: int, stage: str, *, archive_existing: bool) -> ModelVersionInfo:
    try:
        with warnings.catch_warnings():
            # Legacy stages are deprecated in MLflow but remain the binding many teams use.
            warnings.simplefilter("ignore", FutureWarning)
            mv = _registry().transition_model_version_stage(
                name, str(version), stage, archive_existing_versions=archive_existing
            )
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, name=name, version=version) from exc
    return _version_info(mv)


def set_alias(name: str, alias: str, version: int) -> None:
    try:
        _registry().set_registered_model_alias(name, alias, str(version))
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, name=name, version=version) from exc


def delete_alias(name: str, alias: str) -> None:
    try:
        _registry().delete_registered_model_alias(name, alias)
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, name=name) from exc


def version_user_id(name: str, version: int) -> str:
    """The user MLflow names on a version ("" when none). MLflow records no author for a stage
    transition or an alias move: this is the version's own user, the nearest it says."""
    try:
        return _client().get_model_version(name, str(version)).user_id or ""
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, name=name, version=version) from exc


def set_version_tags(name: str, version: int, tags: dict[str, str]) -> None:
    registry = _registry()
    try:
        for key, value in tags.items():
            registry.set_model_version_tag(name, str(version), key, value)
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, name=name, version=version) from exc


def delete_version_tag(name: str, version: int, key: str) -> None:
    try:
        _registry().delete_model_version_tag(name, str(version), key)
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, name=name, version=version) from exc


def mlflow_version() -> str:
    return mlflow.__version__


def get_runs_data(run_ids: list[str], *, batch_size: int = 100) -> dict[str, RunData]:
    """Metrics, params and users of many runs in a few calls (search_runs with run_id IN (...))."""
    wanted = sorted({run_id for run_id in run_ids if run_id})
    if not wanted:
        return {}
    client = _client()
    found: dict[str, RunData] = {}
    try:
        experiment_ids = _all_experiment_ids(client)
        for start in range(0, len(wanted), batch_size):
            batch = wanted[start : start + batch_size]
            id_list = ", ".join(_quote(run_id) for run_id in batch)
            token = None
            while True:
                page = client.search_runs(
                    experiment_ids,
                    filter_string=f"attributes.run_id IN ({id_list})",
                    max_results=len(batch),
                    page_token=token,
                )
                for run in page:
                    found[run.info.run_id] = _run_data(run)
                token = page.token
                if not token:
                    break
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc) from exc
    return found


def _all_experiment_ids(client: MlflowClient) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        page = client.search_experiments(view_type=ViewType.ALL, max_results=1000, page_token=token)
        ids.extend(experiment.experiment_id for experiment in page)
        token = page.token
        if not token:
            return ids


# --- used to seed a demo registry -----------------------------------------------------------


def create_run(
    experiment_name: str,
    *,
    metrics: dict[str, float],
    params: dict[str, str],
    tags: dict[str, str] | None = None,
) -> str:
    client = _client()
    try:
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
        run = client.create_run(experiment_id, tags=tags or {})
        now = int(__import__("time").time() * 1000)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
            params=[Param(key, str(value)) for key, value in params.items()],
            tags=[RunTag(key, str(value)) for key, value in (tags or {}).items()],
        )
        client.set_terminated(run.info.run_id)
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc) from exc
    return run.info.run_id


def log_run_files(run_id: str, files: dict[str, bytes], *, artifact_path: str = "model") -> None:
    """Write small files under the run's `artifact_path` (the demo's model files)."""
    client = _client()
    try:
        with tempfile.TemporaryDirectory(prefix="run-files-") as scratch:
            for relative, content in files.items():
                target = Path(scratch) / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            client.log_artifacts(run_id, scratch, artifact_path=artifact_path)
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc) from exc


def create_registered_model(name: str, *, description: str = "", tags: dict[str, str] | None = None) -> None:
    try:
        _client().create_registered_model(name, tags=tags or {}, description=description)
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, name=name) from exc


def create_model_version(
    name: str, *, run_id: str, tags: dict[str, str] | None = None, description: str = ""
) -> int:
    try:
        mv = _client().create_model_version(
            name, f"runs:/{run_id}/model", run_id=run_id, tags=tags or {}, description=description
        )
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, name=name) from exc
    return int(mv.version)


def registered_model_exists(name: str) -> bool:
    try:
        _client().get_registered_model(name)
    except Exception as exc:  # noqa: BLE001
        error = _translate(exc, name=name)
        if isinstance(error, ModelNotFound):
            return False
        raise error from exc
    return True


# --- MLflow webhooks and delta reads ---------------------------------------------------------


@dataclass(frozen=True)
class WebhookInfo:
    webhook_id: str
    name: str
    url: str
    events: tuple[str, ...]  # "entity.action", sorted
    active: bool
    creation_timestamp: int | None


def _webhook_info(webhook) -> WebhookInfo:
    return WebhookInfo(
        webhook_id=webhook.webhook_id,
        name=webhook.name,
        url=webhook.url,
        events=tuple(sorted(f"{event.entity.value}.{event.action.value}" for event in webhook.events)),
        active=webhook.status.is_active(),
        creation_timestamp=webhook.creation_timestamp,
    )


def list_webhooks() -> list[WebhookInfo]:
    """Every webhook MLflow has (its secrets are never returned)."""
    client = _client()
    found: list[WebhookInfo] = []
    token = None
    try:
        while True:
            page = client.list_webhooks(max_results=100, page_token=token)
            found.extend(_webhook_info(webhook) for webhook in page)
            token = page.token
            if not token:
                return found
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc) from exc


def create_webhook(*, name: str, url: str, events: list[str], secret: str, description: str) -> WebhookInfo:
    try:
        webhook = _client().create_webhook(
            name=name, url=url, events=events, secret=secret, description=description, status="ACTIVE"
        )
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc) from exc
    return _webhook_info(webhook)


def update_webhook(
    webhook_id: str, *, name: str, url: str, events: list[str], secret: str, description: str
) -> WebhookInfo:
    """Set every field, the secret included (MLflow never returns it, so it is always sent)."""
    try:
        webhook = _client().update_webhook(
            webhook_id,
            name=name,
            url=url,
            events=events,
            secret=secret,
            description=description,
            status="ACTIVE",
        )
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc) from exc
    return _webhook_info(webhook)


def delete_webhook(webhook_id: str) -> None:
    try:
        _client().delete_webhook(webhook_id)
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc) from exc


def iter_model_versions_updated_since(
    since: int | None, *, page_size: int = 200, reread_ms: int = 0
) -> Iterator[list[ModelVersionInfo]]:
    """Pages of the versions whose last_updated_timestamp is after `since` (MLflow's ms clock).

    MLflow 3.17's search_model_versions refuses `last_updated_timestamp` in a filter (only
    name, version_number, run_id and source_path may be filtered on) but orders by it. So this
    asks for every version newest first and pages further only while a whole page is newer than
    `since`: one call when fewer than `page_size` versions changed, whatever the registry's
    size. Versions up to `reread_ms` before `since` that the pages read are yielded too (the
    caller's overlap); they never cause another page. With no `since`: one page, the newest.
    """
    floor = None if since is None else since - reread_ms
    token = None
    while True:
        try:
            page = _client().search_model_versions(
                max_results=page_size,
                order_by=["last_updated_timestamp DESC"],
                page_token=token,
            )
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc) from exc
        versions = [_version_info(mv) for mv in page]
        wanted = [v for v in versions if floor is None or (v.last_updated_timestamp or 0) > floor]
        if wanted:
            yield wanted
        token = page.token
        reached = since is None or any((v.last_updated_timestamp or 0) <= since for v in versions)
        if reached or not token:
            return
