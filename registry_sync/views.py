from __future__ import annotations

from django.http import HttpResponse


def model_list(request):
    return HttpResponse("")


def model_detail(request, name):
    return HttpResponse("")


def mlflow_webhook(request):
    return HttpResponse("")
