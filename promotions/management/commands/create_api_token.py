"""`manage.py create_api_token USERNAME [--name NAME]`: a token for a bot, printed once."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from promotions import audit, tokens
from promotions.errors import PromotionError


class Command(BaseCommand):
    help = "Create a personal API token for USERNAME and print it (it is stored only as a hash)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="What the token is for (default: 'API token').")

    @audit.acting_from_cli()
    def handle(self, *args, **options):
        user = get_user_model().objects.filter(username=options["username"], is_active=True).first()
        if user is None:
            raise CommandError(f"User '{options['username']}' does not exist or is inactive.", returncode=2)
        try:
            token, raw = tokens.api_token_create(user=user, name=options["name"], via="cli")
        except PromotionError as exc:
            raise CommandError(exc.message, returncode=2) from None
        self.stderr.write(
            f"Token '{token.name}' ({token.prefix}…) for {user.get_username()}; it is not shown again:"
        )
        self.stdout.write(raw)
