from __future__ import annotations

from django.shortcuts import render
from django.views.decorators.http import require_GET

from promotions import selectors


@require_GET
def queue(request):
    return render(request, "promotions/queue.html", {"rows": selectors.queue_rows(request.user)})
