"""The inbound MLflow webhook; the model pages are promotions' (promotions.urls)."""

from django.urls import path

from registry_sync import views

urlpatterns = [
    path("hooks/mlflow/", views.mlflow_webhook, name="mlflow_webhook"),
]
