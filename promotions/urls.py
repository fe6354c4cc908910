from django.urls import path

from promotions import views

urlpatterns = [
    path("", views.queue, name="queue"),
]
