"""Property-based contract test: schemathesis against /api/openapi.json on a live server.

Every operation gets generated requests, valid and invalid, with a valid token: no 5xx, every
status and body as documented, invalid input refused, missing auth refused.

Filing asks MLflow first (nothing is filed on the mirror's word alone), so the product talks to
the session's MLflow server, where the world's model is registered once for the module.
"""

import json
import uuid

import pytest
import requests
import schemathesis
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.config import SchemathesisConfig

from promotions import roles, services, tokens
from promotions.api import api
from promotions.models import ApiToken
from registry_sync.models import RegisteredModel, SyncRun
from registry_sync.services import sync_registry
from tests.conftest import make_user, private_mlflow_server
from tests.factories import stage, version
from tests.registry_helpers import make_version
from tests.registry_helpers import stage as move

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


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """This module's own MLflow server. The bulk operation without `models` syncs the whole
    registry first; on the session's shared server that registry holds every model the rest of
    the suite registered, and a first sync of all of them inside one request outlasts the
    client's timeout on a slow machine. Here it holds the world's model only."""
    with private_mlflow_server(tmp_path_factory.mktemp("mlflow-contract")) as server:
        yield server


@pytest.fixture(scope="module")
def model_in_mlflow(mlflow_server):
    """v1 in Production, v2 in Staging, v3 in no stage; registered once (a second a version)."""
    name = f"sales_forecast_{uuid.uuid4().hex[:8]}"
    client = mlflow_server.client()
    make_version(client, name, metrics={"accuracy": 0.9})
    make_version(client, name, metrics={"accuracy": 0.93})
    make_version(client, name, metrics={"accuracy": 0.95}, tags={"validation": "passed"})
    move(client, name, 1, "Production")
    move(client, name, 2, "Staging")
    return name


@pytest.fixture
def world(live_server, transactional_db, registry, model_in_mlflow):
    fuzzer = make_user("fuzzer", *roles.ALL_ROLES)
    requester = make_user("filer", roles.REQUESTERS)
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_in_mlflow)
    model = RegisteredModel.objects.get(name=model_in_mlflow)
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
