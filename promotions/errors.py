"""What the services refuse with. Every message is meant for the person who asked."""

from __future__ import annotations


class PromotionError(Exception):
    """Base: a refused action. `code` is stable for the API; the message is for people."""

    code = "refused"
    http_status = 400

    # The request the refusal is about, when there is one (the open duplicate, the applied
    # request through which a version holds a stage): a pipeline follows it instead of failing.
    request_id: int | None = None

    def __init__(self, message: str, *, request_id: int | None = None):
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class InvalidRequest(PromotionError):
    code = "invalid"
    http_status = 422


class AlreadyHolds(InvalidRequest):
    """The version is in the stage already: nothing to request. `request_id` names the applied
    request that put it there, if one did (a pipeline re-run has its answer)."""

    code = "already_holds"


class UnknownStage(InvalidRequest):
    code = "unknown_stage"


class UnknownVersion(InvalidRequest):
    code = "unknown_version"


class ChecksFailed(InvalidRequest):
    code = "checks_failed"


class DuplicateRequest(PromotionError):
    code = "duplicate"
    http_status = 409


class AlreadyDecided(PromotionError):
    code = "already_decided"
    http_status = 409


class EvidenceChanged(AlreadyDecided):
    """The reviewer decided on evidence that has since changed: a fresh look is needed, not a
    retry. A kind of AlreadyDecided (the page moved on), with its own code for pipelines."""

    code = "evidence_changed"
    http_status = 409


class NotAllowed(PromotionError):
    code = "forbidden"
    http_status = 403


class NotIndependent(NotAllowed):
    """The reviewer made the version (its MLflow user, or its run's) and the stage requires
    independent validators."""

    code = "not_independent"


class SignatureRequired(NotAllowed):
    """The stage requires an electronic signature, which only the decision page takes: a token
    proves the pipeline, not the person at the keyboard."""

    code = "signature_required"


class SignatureRefused(InvalidRequest):
    """The signature did not check: a wrong password, a meaning the stage does not offer, a form
    already used or too old. `field` names the form field the message belongs beside."""

    code = "signature_refused"

    def __init__(self, message: str, *, field: str = ""):
        super().__init__(message)
        self.field = field


class RegistryUnavailable(PromotionError):
    """MLflow could not be asked, so nothing was filed: worth trying again later."""

    code = "registry_unavailable"
    http_status = 503


class TransientApplyError(Exception):
    """MLflow could not be reached; the task retries with backoff."""

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


class ManifestPending(PromotionError):
    """The worker has not yet recorded the model's files: there is nothing to approve yet."""

    code = "manifest_pending"
    http_status = 409


class ManifestFailed(PromotionError):
    """The model's files could not be recorded (none, one missing, a store that cannot be read):
    the request cannot be approved."""

    code = "manifest_failed"
    http_status = 409
