"""`manage.py verify_audit_log`: walk the hash chain and name the first broken entry; then name
every reviewer's signature that no longer matches what it signed (audit/signatures.py)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from promotions import audit


class Command(BaseCommand):
    help = (
        "Verify the audit log's hash chain (exit 1 naming the first broken entry) and every "
        "signature on a decision (exit 1 naming each that no longer matches)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--export", help="Verify an exported file against its manifest instead.")
        parser.add_argument(
            "--record",
            action="store_true",
            help="Record a passed verification in the audit log (audit.verified), for monitoring's "
            "'time since the last verification'; a failed one is never recorded.",
        )

    @audit.acting_from_cli()
    def handle(self, *args, **options):
        if options["export"]:
            report, broken_signatures = audit.verify_export(options["export"]), []
        else:
            report, broken_signatures = audit.verify_database(), audit.signature_problems()
        if report.note:
            self.stdout.write(f"Keys: {report.note}.")
        failures = []
        if not report.ok:
            if report.first_bad_sequence is None:
                # a problem with the file or its manifest as a whole, not with one entry
                what = "Audit log export" if options["export"] else "Audit log"
                failures.append(f"{what} broken: {report.reason}.")
            else:
                failures.append(f"Audit log broken at entry #{report.first_bad_sequence}: {report.reason}.")
        failures += [f"Signature broken: {problem}." for problem in broken_signatures]
        if failures:
            raise CommandError("\n".join(failures), returncode=1)
        if options["record"] and not options["export"]:
            audit.record_verification(report)
        self.stdout.write(
            self.style.SUCCESS(f"Audit log verified: {report.count} entries, head {report.head_hash}")
        )
