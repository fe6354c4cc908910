"""bench/pages.py's settings for gunicorn: the product's, plus one minimal view to compare with."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.pages_urls"
