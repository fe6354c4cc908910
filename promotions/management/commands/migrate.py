"""`manage.py migrate`, as the owner role when DATABASE_OWNER_URL is set (promotions/database_roles.py).

Django's own command, run on the default database reconnected as the owner; afterwards the
application role (DATABASE_URL's) gets its privileges on every table, new ones included.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.commands.migrate import Command as DjangoMigrateCommand
from django.db import connections

from promotions import database_roles


class Command(DjangoMigrateCommand):
    help = DjangoMigrateCommand.help + " With DATABASE_OWNER_URL: as the owner role, then grants."

    def handle(self, *args, **options):
        connection = connections[options["database"]]
        if not database_roles.owner_configured() or options["database"] != "default":
            return super().handle(*args, **options)
        with database_roles.connected_as_owner(connection):
            super().handle(*args, **options)
            database_roles.app_role_grant(connection, settings.DATABASE_APP_ROLE)
            if options["verbosity"] >= 1:
                self.stdout.write(
                    f"Granted the application role {settings.DATABASE_APP_ROLE} its privileges."
                )
        return None
