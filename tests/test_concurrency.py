"""Two reviewers at the same moment, and concurrent audit writers, on real connections."""

import threading

import pytest
from django.db import connection, connections, transaction

from promotions import audit, services
from promotions.errors import PromotionError
from promotions.models import AuditEvent, PromotionRequest, Review
from tests.factories import audit_history, mirror_model, stage, version

pytestmark = pytest.mark.django_db(transaction=True)


def run_together(*functions):
    """Start every function at once, each in its own thread with its own connection."""
    barrier = threading.Barrier(len(functions))
    outcomes = [None] * len(functions)

    def runner(index, function):
        try:
            barrier.wait()
            outcomes[index] = function()
        except PromotionError as exc:
            outcomes[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=runner, args=(i, f)) for i, f in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def filed(requester, *, current_stage, target):
    """A pending request for version 1 of a new model, now in current_stage."""
    model = mirror_model(versions={1: {"current_stage": current_stage}})
    return services.promotion_request_create(
        version=version(model, 1), stage=stage(target), requested_by=requester, justification="go"
    )


def test_two_reviewers_approving_at_once_change_the_request_once(requester, reviewer, reviewer2):
    request = filed(requester, current_stage="Staging", target="Production")

    run_together(
        lambda: services.review_approve(request=request, reviewer=reviewer),
        lambda: services.review_approve(request=request, reviewer=reviewer2),
    )

    request.refresh_from_db()
    assert request.status == PromotionRequest.Status.APPROVED
    assert Review.objects.filter(request=request).count() == 2
    assert AuditEvent.objects.filter(action="request.approved", request_id=request.pk).count() == 1
    assert audit.verify_database().ok


def test_the_same_reviewer_clicking_twice_records_one_approval(requester, reviewer):
    request = filed(requester, current_stage="Staging", target="Production")

    outcomes = run_together(*[lambda: services.review_approve(request=request, reviewer=reviewer)] * 2)

    assert Review.objects.filter(request=request).count() == 1
    assert sum(isinstance(o, PromotionRequest) for o in outcomes) == 1
    assert AuditEvent.objects.filter(action="review.approved").count() == 1


def test_approve_and_reject_at_once_leave_one_decision(requester, reviewer, reviewer2):
    request = filed(requester, current_stage="None", target="Staging")

    run_together(
        lambda: services.review_approve(request=request, reviewer=reviewer),
        lambda: services.review_reject(request=request, reviewer=reviewer2, comment="no"),
    )

    request.refresh_from_db()
    assert request.status in (PromotionRequest.Status.APPROVED, PromotionRequest.Status.REJECTED)
    assert Review.objects.filter(request=request).count() == 1
    decided = AuditEvent.objects.filter(action__in=["request.approved", "review.rejected"]).count()
    assert decided == 1


def test_concurrent_audit_writers_never_fork_or_skip_the_chain():
    before = AuditEvent.objects.count()

    def writer(n):
        return lambda: audit_history(15, meaning=lambda i: f"writer {n} entry {i}")

    run_together(*[writer(n) for n in range(4)])

    sequences = list(AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True))
    assert sequences == list(range(1, before + 61))
    report = audit.verify_database()
    assert report.ok, report
    assert connection.vendor in ("sqlite", "postgresql")


def _waits_on_a_lock(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row is not None and row[0] == "Lock"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's row locks and deferred keys")
def test_an_approval_while_another_request_to_its_stage_is_filed_never_deadlocks(requester, reviewer):
    # PostgreSQL checks Django's foreign keys at COMMIT: a filing that already holds the audit
    # chain's head then takes a key-share lock on its stage. An approval's request lock that also
    # locked the stage's row (FOR UPDATE through a join) while waiting for the head made the two
    # wait for each other; PostgreSQL then aborted one (seen in bench/scale.py's probe).
    pending = filed(requester, current_stage="Staging", target="Production")
    new_model = mirror_model(versions={1: {"current_stage": "Staging"}})
    filing_holds_the_head, approval_waits = threading.Event(), threading.Event()
    approver_pid: list[int] = []
    errors: list[Exception] = []

    def file_and_hold():
        try:
            with transaction.atomic():
                services.promotion_request_create(
                    version=version(new_model, 1),
                    stage=stage("Production"),
                    requested_by=requester,
                    justification="go",
                )
                filing_holds_the_head.set()
                approval_waits.wait(30)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)
        finally:
            connections.close_all()

    def approve():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                approver_pid.append(cursor.fetchone()[0])
            filing_holds_the_head.wait(30)
            services.review_approve(request=pending, reviewer=reviewer)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=file_and_hold), threading.Thread(target=approve)]
    for thread in threads:
        thread.start()
    for _ in range(300):  # the approval reaches the audit head, which the filing holds
        if approver_pid and filing_holds_the_head.is_set() and _waits_on_a_lock(approver_pid[0]):
            break
        threading.Event().wait(0.1)
    else:
        pytest.fail("the approval never waited for the filing's audit entry")
    approval_waits.set()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert Review.objects.filter(request=pending).count() == 1
    assert PromotionRequest.objects.filter(version__model__name=new_model.name).count() == 1
    assert audit.verify_database().ok
