from django.contrib.auth.decorators import login_not_required
from django.http import JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from audits.api import views


@csrf_exempt  # it changes nothing, and must answer in JSON whatever the method
@login_not_required
def no_endpoint(request):
    return JsonResponse(
        {"detail": f"No API endpoint at {request.path}; the schema is at /api/v1/schema/."},
        status=404,
    )


router = DefaultRouter()
router.register("checkpoints", views.CheckpointViewSet, basename="checkpoint")
router.register("suites", views.SuiteViewSet, basename="suite")
router.register("audits", views.AuditViewSet, basename="audit")
router.register("events", views.EventViewSet, basename="event")

urlpatterns = [
    path("gate/", views.GateView.as_view(), name="api-gate"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    *router.urls,
    # Anything else under /api/v1/ gets JSON, as API clients expect, not the site's HTML page.
    re_path(r"^[\s\S]*$", no_endpoint),  # [\s\S], not ".": a path may hold a newline
]
