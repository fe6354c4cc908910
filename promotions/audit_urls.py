"""URLs of the auditors' pages (`/audit/…`)."""

from django.urls import path

from promotions import audit_views

urlpatterns: list = [
    path("", audit_views.audit_log, name="audit_log"),
    path("export.csv", audit_views.audit_export_csv, name="audit_export_csv"),
    path("export.jsonl", audit_views.audit_export_jsonl, name="audit_export_jsonl"),
    path("manifest.json", audit_views.audit_manifest, name="audit_manifest"),
    path("metrics/", audit_views.audit_metrics, name="audit_metrics"),
]
