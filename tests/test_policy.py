"""One rule for "may decide": the Python predicate and the queue's SQL agree on every case."""

import itertools

import pytest
from django.contrib.auth.models import AnonymousUser, Group
from django.utils import timezone

from promotions import policy, roles
from promotions.models import PromotionRequest, Review
from tests.conftest import make_user
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status


def filed(model, number: int, requested_by, *, status: str = Status.PENDING, stage_name: str = "Production"):
    now = timezone.now()
    return PromotionRequest.objects.create(
        version=version(model, number),
        stage=stage(stage_name),
        requested_by=requested_by,
        requested_by_name=requested_by.get_username(),
        justification="why",
        status=status,
        created_at=now,
        updated_at=now,
        expires_at=now + timezone.timedelta(days=1),
    )


ROLE_SETS = [
    (),
    (roles.REQUESTERS,),
    (roles.REVIEWERS,),
    (roles.STAGE_ADMINS,),
    (roles.AUDITORS,),
    (roles.REQUESTERS, roles.REVIEWERS),
    (roles.REVIEWERS, roles.STAGE_ADMINS),
]


def test_may_decide_and_the_queue_query_agree_for_every_role_and_request():
    owner = make_user("owner", roles.REQUESTERS, roles.REVIEWERS)
    model = mirror_model(versions={n: {} for n in range(1, 9)})
    production = stage("Production")
    requests = [
        filed(model, 1, owner),
        filed(model, 2, owner, status=Status.APPROVED),
        filed(model, 3, owner, status=Status.REJECTED),
        filed(model, 4, owner, stage_name="Staging"),
    ]
    users = [AnonymousUser(), owner]
    for number, role_set in enumerate(ROLE_SETS):
        users.append(make_user(f"user{number}", *role_set))
    # A reviewer who already approved, and one whose approval went stale (they may decide again).
    reviewed, stale = make_user("reviewed", roles.REVIEWERS), make_user("stale", roles.REVIEWERS)
    for who, is_stale in ((reviewed, False), (stale, True)):
        Review.objects.create(
            request=requests[0],
            reviewer=who,
            reviewer_name=who.username,
            decision=Review.Decision.APPROVE,
            stale=is_stale,
            created_at=timezone.now(),
        )
    users += [reviewed, stale]
    # A reviewer's own request to a stage they approve for.
    mine = filed(model, 5, users[4])
    requests.append(mine)
    # A stage that lists no approver group at all: nobody decides there.
    nobody = filed(model, 6, owner, stage_name="Archived")
    nobody.stage.approver_groups.clear()
    requests.append(nobody)
    # Filed under the approver groups of the time: Reviewers (as now), and Stage admins only (so
    # a reviewer decides only when a stage admin as well).
    for number, group in ((7, roles.REVIEWERS), (8, roles.STAGE_ADMINS)):
        request = filed(model, number, owner)
        request.approver_groups_at_filing.set([Group.objects.get(name=group)])
        requests.append(request)
    assert production.approver_groups.filter(name=roles.REVIEWERS).exists()

    checked = 0
    for user, request in itertools.product(users, requests):
        request = PromotionRequest.objects.select_related("stage", "version__model").get(pk=request.pk)
        in_sql = policy.decidable_requests(user).filter(pk=request.pk).exists()
        assert policy.may_decide(user, request) == in_sql, (user, request.pk, request.status)
        assert policy.may_decide(user, request, reviews=list(request.reviews.all())) == in_sql
        checked += 1
    assert checked == len(users) * len(requests)
    # The rule is not vacuous: some pairs may, some may not.
    decided = {policy.may_decide(u, r) for u, r in itertools.product(users, requests)}
    assert decided == {True, False}


def test_the_approvals_that_count_are_the_same_in_python_and_in_sql():
    owner = make_user("owner", roles.REQUESTERS)
    model = mirror_model(versions={n: {} for n in range(1, 4)})
    plain, under_reviewers, under_admins = (filed(model, n, owner) for n in (1, 2, 3))
    under_reviewers.approver_groups_at_filing.set([Group.objects.get(name=roles.REVIEWERS)])
    under_admins.approver_groups_at_filing.set([Group.objects.get(name=roles.STAGE_ADMINS)])
    reviewers = []
    for number, (role_set, active) in enumerate(itertools.product(ROLE_SETS, (True, False))):
        user = make_user(f"reviewer{number}", *role_set)
        user.is_active = active
        user.save()
        reviewers.append(user)
    for request in (plain, under_reviewers, under_admins):
        for number, user in enumerate(reviewers):
            Review.objects.create(
                request=request,
                reviewer=user,
                reviewer_name=user.username,
                decision=Review.Decision.REJECT if number % 5 == 4 else Review.Decision.APPROVE,
                stale=number % 7 == 6,
                created_at=timezone.now(),
            )
    counted = set()
    for request in (plain, under_reviewers, under_admins):
        request = PromotionRequest.objects.select_related("stage").get(pk=request.pk)
        reviews = request.reviews.select_related("reviewer")
        in_python = {r.pk for r in reviews if policy.approval_counts(r, request)}
        in_sql = {r.pk for r in policy.counting_approvals(request)}
        assert in_python == in_sql, request.pk
        counted.add(len(in_sql))
    assert len(counted) > 1 and 0 not in counted  # the groups at filing change the answer


def test_the_refusal_names_the_reason():
    owner = make_user("owner", roles.REVIEWERS)
    outsider = make_user("outsider", roles.REQUESTERS)
    request = filed(mirror_model(), 1, owner)
    assert policy.decide_refusal(owner, request).reason == "own request"
    refused = policy.decide_refusal(outsider, request)
    assert refused.reason == "not an approver of the stage"
    assert "Only members of Reviewers" in refused.message
    assert policy.decide_refusal(make_user("rex", roles.REVIEWERS), request) is None
    assert Group.objects.filter(name=roles.REVIEWERS).exists()
