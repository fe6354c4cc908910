from django.urls import path

from registry_sync import views

urlpatterns = [
    path("models/", views.model_list, name="model_list"),
    path("models/<path:name>/", views.model_detail, name="model_detail"),
    path("hooks/mlflow/", views.mlflow_webhook, name="mlflow_webhook"),
]
