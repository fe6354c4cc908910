"""`manage.py verify_audit_log`: walk the hash chain and name the first broken entry."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from promotions import audit


class Command(BaseCommand):
    help = "Verify the audit log's hash chain (exit 1 naming the first broken entry)."

    def add_arguments(self, parser):
        parser.add_argument("--export", help="Verify an exported file against its manifest instead.")

    @audit.acting_from_cli()
    def handle(self, *args, **options):
        if options["export"]:
            report = audit.verify_export(options["export"])
        else:
            report = audit.verify_database()
        if report.note:
            self.stdout.write(f"Keys: {report.note}.")
        if not report.ok:
            if report.first_bad_sequence is None:
                # a problem with the file or its manifest as a whole, not with one entry
                what = "Audit log export" if options["export"] else "Audit log"
                raise CommandError(f"{what} broken: {report.reason}.", returncode=1)
            raise CommandError(
                f"Audit log broken at entry #{report.first_bad_sequence}: {report.reason}.", returncode=1
            )
        self.stdout.write(
            self.style.SUCCESS(f"Audit log verified: {report.count} entries, head {report.head_hash}")
        )
