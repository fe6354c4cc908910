"""URLs of the auditors' pages (`/audit/…`)."""

from django.urls import path

urlpatterns: list = []
