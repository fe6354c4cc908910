"""`manage.py request_promotion --model-name NAME --version N --stage STAGE [...]`
`manage.py request_promotion --all-passing --stage STAGE [--model-name NAME] [...]`

Exit codes: 0 filed (with --wait: applied), 1 refused, rejected, failed, cancelled or expired,
2 bad input (unknown stage, model or version; empty justification), 3 MLflow unreachable
(nothing filed). With --all-passing: 0 when nothing was refused (skipped models are not an
error), 1 otherwise, 3 when MLflow is unreachable.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from promotions import audit, catalog, policy, services
from promotions.errors import InvalidRequest, PromotionError, RegistryUnavailable
from promotions.models import AuditEvent, PromotionRequest

EXIT_REFUSED, EXIT_BAD_INPUT, EXIT_UNREACHABLE = 1, 2, 3


def _refusal(exc: PromotionError) -> CommandError:
    """A service's refusal as the command's one line: exit 3 when MLflow could not be asked (try
    again later), 2 for bad input, 1 for a refusal."""
    if isinstance(exc, RegistryUnavailable):
        code = EXIT_UNREACHABLE
    elif isinstance(exc, InvalidRequest):
        code = EXIT_BAD_INPUT
    else:
        code = EXIT_REFUSED
    return CommandError(exc.message, returncode=code)


class Command(BaseCommand):
    help = "File a promotion request for a model version (and optionally wait for the outcome)."

    def add_base_argument(self, parser, *args, **kwargs):
        # Django's own --version (print Django's version) would shadow the model version flag.
        if "--version" in args:
            return
        super().add_base_argument(parser, *args, **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("--model-name", help="Required, unless --all-passing (then: only this model).")
        parser.add_argument("--version", type=int, help="Required, unless --all-passing.")
        parser.add_argument("--stage", required=True, help="Target stage, as named in the stage catalog.")
        parser.add_argument("--justification", default=None, help="Why this version should move.")
        parser.add_argument("--user", default=None, help="File as this user (default: $PROMOTE_USER or you).")
        parser.add_argument(
            "--evidence-file", type=Path, help="A JSON object of CI evidence (tests, coverage…)."
        )
        parser.add_argument(
            "--through",
            action="store_true",
            help="Promote through the pipeline: file each step to --stage in catalog order; "
            "each step is filed when the one before it is applied and waits for its own approvals.",
        )
        parser.add_argument(
            "--all-passing",
            action="store_true",
            help="For every model, file its latest version whose checks for --stage pass and that "
            "may move there; list what was filed, skipped and refused.",
        )
        parser.add_argument(
            "--wait", action="store_true", help="Wait until the request reaches a final status."
        )
        parser.add_argument(
            "--timeout", type=float, default=3600, help="Seconds --wait waits (default 3600)."
        )

    @audit.acting_from_cli()
    def handle(self, *args, **options):
        if options["all_passing"]:
            for flag in ("version", "through", "wait"):
                if options[flag]:
                    raise CommandError(f"--{flag} does not go with --all-passing.", returncode=EXIT_BAD_INPUT)
        elif options["model_name"] is None or options["version"] is None:
            raise CommandError(
                "--model-name and --version are required (or --all-passing).", returncode=EXIT_BAD_INPUT
            )
        user = self._user(options["user"])
        evidence = self._evidence(options["evidence_file"])
        justification = options["justification"]
        if justification is None:
            justification = f"Filed from the command line by {user.get_username()}."
        if options["all_passing"]:
            self._all_passing(options, user=user, justification=justification, evidence=evidence)
            return
        try:
            request = services.promotion_request_file(
                model_name=options["model_name"],
                version=options["version"],
                stage_name=options["stage"],
                requested_by=user,
                justification=justification,
                ci_evidence=evidence,
                via="cli",
                through=options["through"],
            )
        except PromotionError as exc:
            raise _refusal(exc) from None
        self._print(request)
        if request.then_stages:
            self.stdout.write(
                f"  then: {' → '.join(request.then_stages)} (each filed once the step before is applied)"
            )
        if options["wait"]:
            self._wait(request, options["timeout"])

    def _all_passing(self, options, *, user, justification: str, evidence: dict | None) -> None:
        try:
            outcome = services.promotion_requests_create_passing(
                stage=catalog.stage_get_by_name(options["stage"]),
                requested_by=user,
                justification=justification,
                model_names=[options["model_name"]] if options["model_name"] else None,
                ci_evidence=evidence,
                via="cli",
            )
        except PromotionError as exc:
            raise _refusal(exc) from None
        self.stdout.write(
            f"{outcome.stage.name}: {len(outcome.filed)} filed, {len(outcome.skipped)} skipped, "
            f"{len(outcome.refused)} refused"
        )
        for request in outcome.filed:
            self.stdout.write(
                f"  filed    #{request.pk} {request.version.model.name} v{request.version.version} "
                f"({request.get_status_display()})"
            )
        for skipped in outcome.skipped:
            self.stdout.write(f"  skipped  {skipped.model_name}: {skipped.reason}")
        for refused in outcome.refused:
            self.stdout.write(f"  refused  {refused.model_name} v{refused.version}: {refused.message}")
        if outcome.refused:
            raise CommandError(f"{len(outcome.refused)} request(s) refused.", returncode=EXIT_REFUSED)

    def _user(self, username: str | None):
        username = username or os.environ.get("PROMOTE_USER") or getpass.getuser()
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(
                f"User '{username}' does not exist or is inactive; pass --user USERNAME.", returncode=2
            )
        return user

    def _evidence(self, path: Path | None) -> dict | None:
        if path is None:
            return None
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise CommandError(
                f"Cannot read the evidence file {path}: {exc.strerror}.", returncode=2
            ) from None
        except ValueError as exc:
            raise CommandError(f"The evidence file {path} is not JSON: {exc}.", returncode=2) from None
        if not isinstance(data, dict):
            raise CommandError(f"The evidence file {path} must hold a JSON object.", returncode=2)
        return data

    def _print(self, request: PromotionRequest) -> None:
        approvals = request.reviews.filter(decision="approve", stale=False).count()
        self.stdout.write(
            f"Request #{request.pk}: {request.get_status_display()} — {request.version.model.name} "
            f"v{request.version.version} → {request.stage.name} "
            f"({approvals}/{policy.required_approvals(request)} approvals)"
        )
        for result in request.check_results:
            mark = "✓" if result["passed"] else "✗"
            actual = f" ({result['actual']})" if result["actual"] else f" ({result['message']})"
            self.stdout.write(f"  {mark} {result['rule']}{actual}")

    def _wait(self, request: PromotionRequest, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = request.status
        while True:
            request.refresh_from_db()
            if request.status != last:
                self.stdout.write(f"Request #{request.pk}: {request.get_status_display()}")
                last = request.status
            if request.status == PromotionRequest.Status.APPLIED:
                if not request.then_stages:
                    return
                following = (
                    PromotionRequest.objects.filter(
                        version=request.version,
                        stage__name=request.then_stages[0],
                        created_at__gte=request.created_at,
                    )
                    .order_by("-created_at")
                    .first()
                )
                if following is not None:
                    self._print(following)
                    request, last = following, following.status
                    continue
                stopped = AuditEvent.objects.filter(action="pipeline.stopped", request_id=request.pk).first()
                if stopped is not None:
                    raise CommandError(stopped.meaning, returncode=EXIT_REFUSED)
            if request.status in (
                PromotionRequest.Status.REJECTED,
                PromotionRequest.Status.CANCELLED,
                PromotionRequest.Status.EXPIRED,
                PromotionRequest.Status.FAILED,
            ):
                reason = f": {request.last_error}" if request.last_error else ""
                raise CommandError(
                    f"Request #{request.pk} ended {request.get_status_display().lower()}{reason}",
                    returncode=EXIT_REFUSED,
                )
            if time.monotonic() > deadline:
                raise CommandError(
                    f"Request #{request.pk} is still {request.get_status_display().lower()} "
                    f"after {timeout:.0f} s.",
                    returncode=EXIT_REFUSED,
                )
            time.sleep(1)
