"""A real task through the configured broker to a real worker process and back."""

import uuid

from bench.common import wait_until
from promotions.models import WorkerHeartbeat
from promotions.tasks import record_heartbeat


def test_a_task_reaches_a_worker_and_its_effect_lands_in_the_database(celery_worker):
    marker = uuid.uuid4().hex
    record_heartbeat.delay(marker)
    row = wait_until(
        lambda: WorkerHeartbeat.objects.filter(marker=marker).first(),
        timeout=60,
        message=f"the worker to record {marker}\n{celery_worker.log()[-2000:]}",
    )
    assert row.worker  # the worker's host name, written by the worker process
