"""Property-based contract test: schemathesis against /api/openapi.json on a live server.

Every operation gets generated requests, valid and invalid, with a valid token: no 5xx, every
status and body as documented, invalid input refused, missing auth refused.

MLflow is pointed at a closed port: requests resolve against the registry mirror (the product
logs the failed refresh and goes on), which keeps the run fast and independent of the session's
shared MLflow server.
"""

import json

import pytest
import requests
import schemathesis
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.config import SchemathesisConfig

from bench.common import free_port
from promotions import roles, services, tokens
from promotions.api import api
from promotions.models import ApiToken
from tests.conftest import make_user
from tests.factories import mirror_model, stage, version

EXAMPLES_PER_OPERATION = 12


CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {"max-examples": EXAMPLES_PER_OPERATION},
        "checks": {
            # Schema-valid data may still name a stage, model or version that does not exist:
            # the API answers 422 with the reason (the contract), so 422 is an accepted
            # answer to valid-looking data too.
            "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422"]}
        },
    }
)
# The schema the app publishes; the live server is checked to serve exactly this document.
# (Loading it lazily from the live server needs schemathesis' `from_fixture`, which does not
# run on pytest 9 yet.)
schema = schemathesis.openapi.from_dict(api.get_openapi_schema(), config=CONFIG)
# Schemathesis prepares some cases (with their auth) while collecting, before any fixture ran:
# the token is a constant, and `world` stores its hash for the user it creates.
TOKEN = "prm_schemathesis-contract-test-token"


@schema.auth()
class BearerToken:
    def get(self, case, context):
        return TOKEN

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture
def world(live_server, transactional_db, settings):
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"
    fuzzer = make_user("fuzzer", *roles.ALL_ROLES)
    requester = make_user("filer", roles.REQUESTERS)
    model = mirror_model(
        "sales_forecast",
        {
            1: {"current_stage": "Production", "metrics": {"accuracy": 0.9}},
            2: {"current_stage": "Staging", "metrics": {"accuracy": 0.93}},
            3: {"current_stage": "None", "metrics": {"accuracy": 0.95}, "tags": {"validation": "passed"}},
        },
    )
    services.promotion_request_create(
        version=version(model, 2), stage=stage("Production"), requested_by=requester, justification="x"
    )
    services.promotion_request_create(
        version=version(model, 3), stage=stage("Staging"), requested_by=requester, justification="y"
    )
    ApiToken.objects.create(
        user=fuzzer,
        name="schemathesis",
        prefix=TOKEN[:12],
        token_hash=tokens.hash_token(TOKEN),
        created_at=timezone.now(),
    )
    return live_server.url


def test_the_live_server_publishes_the_schema_under_test(world):
    base_url = world
    published = requests.get(f"{base_url}/api/openapi.json", timeout=10).json()
    assert published == json.loads(json.dumps(api.get_openapi_schema()))


@schema.parametrize()
@hypothesis_settings(
    deadline=None,
    max_examples=EXAMPLES_PER_OPERATION,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_the_api_keeps_its_contract(case, world):
    case.call_and_validate(base_url=world)
