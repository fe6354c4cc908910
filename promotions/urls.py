from django.urls import path

from promotions import views

urlpatterns = [
    path("", views.queue, name="queue"),
    path("queue/bulk/", views.queue_bulk, name="queue_bulk"),
    path("stages/", views.stage_list, name="stage_list"),
    path("drift/<int:pk>/acknowledge/", views.drift_acknowledge, name="drift_acknowledge"),
    path("models/", views.model_list, name="model_list"),
    # Before model_detail: its <path:name> would take "x/history" for a model's name.
    path("models/<path:name>/history/", views.model_history, name="model_history"),
    path("models/<path:name>/", views.model_detail, name="model_detail"),
    path("requests/new/", views.request_create, name="request_create"),
    path("requests/<int:pk>/", views.request_detail, name="request_detail"),
    path("requests/<int:pk>/status/", views.request_status, name="request_status"),
    path("requests/<int:pk>/decide/", views.request_decide, name="request_decide"),
    path("requests/<int:pk>/cancel/", views.request_cancel, name="request_cancel"),
    path("requests/<int:pk>/retry/", views.request_retry, name="request_retry"),
    path("requests/<int:pk>/emergency/", views.request_emergency, name="request_emergency"),
    path(
        "requests/<int:pk>/retrospective-review/",
        views.request_retrospective_review,
        name="request_retrospective_review",
    ),
    # Beside the auditors' exports under /audit/; promotions/audit/urls.py is tried first.
    path("audit/holders.csv", views.holders_export_csv, name="holders_export_csv"),
]
