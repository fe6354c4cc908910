from django.urls import path

from promotions import views

urlpatterns = [
    path("", views.queue, name="queue"),
    path("queue/bulk/", views.queue_bulk, name="queue_bulk"),
    path("stages/", views.stage_list, name="stage_list"),
    path("drift/<int:pk>/acknowledge/", views.drift_acknowledge, name="drift_acknowledge"),
    path("models/", views.model_list, name="model_list"),
    path("models/<path:name>/", views.model_detail, name="model_detail"),
    path("requests/new/", views.request_create, name="request_create"),
    path("requests/<int:pk>/", views.request_detail, name="request_detail"),
    path("requests/<int:pk>/status/", views.request_status, name="request_status"),
    path("requests/<int:pk>/decide/", views.request_decide, name="request_decide"),
    path("requests/<int:pk>/cancel/", views.request_cancel, name="request_cancel"),
    path("requests/<int:pk>/retry/", views.request_retry, name="request_retry"),
]
