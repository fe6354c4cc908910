"""`manage.py create_database_roles`: the application's PostgreSQL role, created as the owner.

Run with DATABASE_OWNER_URL (the owner role, which needs CREATEROLE to create a role) and
DATABASE_URL naming the application role; see promotions/database_roles.py for the privileges.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from promotions import database_roles


class Command(BaseCommand):
    help = "Create the restricted application role (as the owner role) and grant its privileges."

    def add_arguments(self, parser):
        parser.add_argument("--app-role", help="Role name (default: the user of DATABASE_URL).")
        parser.add_argument("--app-password-env", help="Environment variable holding the role's password.")

    def handle(self, *args, **options):
        if connection.vendor != "postgresql" or not database_roles.owner_configured():
            raise CommandError(
                "Needs PostgreSQL, DATABASE_URL (the application role) and DATABASE_OWNER_URL."
            )
        role = options["app_role"] or settings.DATABASE_APP_ROLE
        password = ""
        if options["app_password_env"]:
            password = os.environ.get(options["app_password_env"], "")
            if not password:
                raise CommandError(f"${options['app_password_env']} is empty.")
        with database_roles.connected_as_owner(connection):
            created = database_roles.app_role_create(connection, role, password)
            database_roles.app_role_grant(connection, role)
        self.stdout.write(f"{'Created' if created else 'Updated'} role {role}; privileges granted.")
