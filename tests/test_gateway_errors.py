"""Each way MLflow can fail becomes a sentence a reviewer understands, naming the host and never
a credential; the library's own text is kept apart (`detail`), redacted as well."""

import pytest
import requests
from mlflow.exceptions import MlflowException, RestException

from registry_sync import gateway

HOST = "http://mlflow.internal:5000"
CALLED = "http://deploy-bot:url-pa55word@mlflow.internal:5000/api/2.0/mlflow/model-versions/get"
POOL = "HTTPConnectionPool(host='mlflow.internal', port=5000): Max retries exceeded with url: /api/2.0/x"
# A token the process is not configured with: only the Authorization pattern can mask it.
HEADER_TOKEN = "dapi0123456789abcdef"


@pytest.fixture(autouse=True)
def tracking_uri_with_credentials(settings):
    settings.MLFLOW_TRACKING_URI = "http://deploy-bot:url-pa55word@mlflow.internal:5000/?token=q-s3cret"


def urllib3_failure(cause: str) -> MlflowException:
    return MlflowException(f"API request to {CALLED} failed with exception {POOL} (Caused by {cause})")


CASES = [
    (
        requests.ConnectionError(f"{POOL} (Caused by NewConnectionError('Connection refused'))"),
        gateway.RegistryUnavailable,
        f"MLflow at {HOST} is not answering.",
    ),
    (
        requests.ReadTimeout("Read timed out. (read timeout=10)"),
        gateway.RegistryUnavailable,
        f"MLflow at {HOST} did not answer in time.",
    ),
    (
        urllib3_failure(
            'NewConnectionError("Failed to establish a new connection: [Errno 111] Connection refused")'
        ),
        gateway.RegistryUnavailable,
        f"MLflow at {HOST} is not answering.",
    ),
    (
        urllib3_failure("ReadTimeoutError(\"HTTPConnectionPool(host='mlflow.internal'): Read timed out.\")"),
        gateway.RegistryUnavailable,
        f"MLflow at {HOST} did not answer in time.",
    ),
    (
        urllib3_failure("ResponseError('too many 503 error responses')"),
        gateway.RegistryUnavailable,
        f"MLflow at {HOST} answered with an error (HTTP 503).",
    ),
    (
        RestException(
            {"error_code": "PERMISSION_DENIED", "message": f"Authorization: Bearer {HEADER_TOKEN}"}
        ),
        gateway.RegistryPermissionDenied,
        f"MLflow at {HOST} refused the credentials (HTTP 403).",
    ),
    (
        RestException({"error_code": "UNAUTHENTICATED", "message": "no credentials"}),
        gateway.RegistryPermissionDenied,
        f"MLflow at {HOST} refused the credentials (HTTP 401).",
    ),
    (
        RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Model Version not found"}),
        gateway.VersionNotFound,
        "Version 5 of model 'sales' does not exist in MLflow.",
    ),
    (
        RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid alias name 'v1'"}),
        gateway.RegistryRejected,
        "INVALID_PARAMETER_VALUE: Invalid alias name 'v1'",
    ),
]


@pytest.mark.parametrize(
    ("raised", "kind", "sentence"), CASES, ids=lambda case: getattr(case, "__name__", None)
)
def test_it_says_what_mlflow_did_in_a_sentence_that_names_the_host(raised, kind, sentence):
    error = gateway._translate(raised, name="sales", version=5)

    assert type(error) is kind
    assert str(error) == sentence
    assert error.detail  # the library's own words, kept for the page's Details


@pytest.mark.parametrize(("raised", "kind", "sentence"), CASES)
def test_neither_the_sentence_nor_the_detail_carries_a_credential(raised, kind, sentence):
    error = gateway._translate(raised, name="sales", version=5)

    for text in (str(error), error.detail):
        for secret in ("deploy-bot", "url-pa55word", "q-s3cret", HEADER_TOKEN):
            assert secret not in text


def test_the_detail_keeps_the_raw_text_a_developer_needs():
    error = gateway._translate(urllib3_failure("ResponseError('too many 503 error responses')"))

    assert "too many 503 error responses" in error.detail
    assert "http://mlflow.internal:5000/api/2.0/mlflow/model-versions/get" in error.detail
    assert "too many" not in str(error)
