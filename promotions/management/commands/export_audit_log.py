"""`manage.py export_audit_log`: write the audit log (or a filtered part) and its manifest."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from promotions import audit
from promotions.audit import exports, filters


class Command(BaseCommand):
    help = (
        "Export the audit log as CSV or JSON Lines to FILE, with FILE.manifest.json beside it "
        "(rows, first/last sequence, chain head, SHA-256, filter). Check it later with "
        "`verify_audit_log --export FILE`."
    )

    def add_arguments(self, parser):
        parser.add_argument("--format", required=True, choices=exports.EXPORT_FORMATS)
        parser.add_argument("-o", "--output", required=True, metavar="FILE")
        parser.add_argument("--since", help="From this date (YYYY-MM-DD, whole UTC day) or ISO 8601 time.")
        parser.add_argument("--until", help="Up to this date (inclusive) or ISO 8601 time.")
        parser.add_argument("--model", help="Model name, exactly.")
        parser.add_argument("--stage", help="A stage of the catalog: entries moving from or to it.")
        parser.add_argument("--actor", help="Username of who acted.")
        parser.add_argument("--action", help="e.g. review.approved, promotion.applied.")
        parser.add_argument("--text", help="Words the entry's meaning contains.")

    @audit.acting_from_cli()
    def handle(self, *args, **options):
        try:
            audit_filter = filters.parse_filter(options)
        except filters.FilterError as exc:
            raise CommandError(str(exc)) from None
        fmt = options["format"]
        cut = exports.export_cut(audit_filter)
        try:
            manifest = exports.write_export(options["output"], cut=cut, fmt=fmt)
        except OSError as exc:
            raise CommandError(f"Cannot write {options['output']}: {exc.strerror or exc}") from None
        # Recorded after the file is written: a failed write exported nothing. The entry's
        # sequence is past the cut, so it is never inside the export it records.
        exports.record_export(actor=None, cut=cut, fmt=fmt, via="cli")
        span = f"#{manifest['first_sequence']}–#{manifest['last_sequence']}" if manifest["rows"] else "none"
        scope = "complete" if manifest["complete"] else f"filtered: {audit_filter.describe()}"
        self.stdout.write(
            self.style.SUCCESS(
                f"Wrote {manifest['rows']} entries ({span}; {scope}) to {options['output']} "
                f"and {exports.manifest_path(options['output'])}"
            )
        )
