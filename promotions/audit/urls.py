"""URLs of the auditors' pages (`/audit/…`)."""

from django.urls import path

from promotions.audit import views

urlpatterns: list = [
    path("", views.audit_log, name="audit_log"),
    path("export.csv", views.audit_export_csv, name="audit_export_csv"),
    path("export.jsonl", views.audit_export_jsonl, name="audit_export_jsonl"),
    path("manifest.json", views.audit_manifest, name="audit_manifest"),
    path("metrics/", views.audit_metrics, name="audit_metrics"),
    path("access/", views.audit_access, name="audit_access"),
    path("access.csv", views.audit_access_csv, name="audit_access_csv"),
    path("access/changes.csv", views.audit_access_changes_csv, name="audit_access_changes_csv"),
    path("emergencies/", views.audit_emergencies, name="audit_emergencies"),
]
