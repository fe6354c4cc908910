"""`manage.py sync_registry [--model NAME] [--full]`: bring the mirror up to date."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from common.operator import acting_from_cli
from registry_sync.models import SyncRun
from registry_sync.services import SyncFailed, format_summary, sync_registry


class Command(BaseCommand):
    help = "Sync the mirror of the MLflow model registry."

    def add_arguments(self, parser):
        parser.add_argument("--model", help="Sync only this registered model.")
        parser.add_argument("--full", action="store_true", help="Re-read every version's run data too.")

    @acting_from_cli()
    def handle(self, *args, **options):
        def progress(stats):
            self.stdout.write(
                f"… {stats.versions} versions read, {stats.created} created, {stats.updated} updated"
            )

        try:
            run = sync_registry(
                trigger=SyncRun.Trigger.COMMAND,
                model_name=options["model"],
                full=options["full"],
                progress=progress,
            )
        except SyncFailed as exc:
            raise CommandError(f"Sync failed: {format_summary(exc.run)}") from None
        self.stdout.write(self.style.SUCCESS(f"Synced: {format_summary(run)}"))
