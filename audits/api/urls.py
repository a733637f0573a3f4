from django.urls import path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from audits.api import views

router = DefaultRouter()
router.register("checkpoints", views.CheckpointViewSet, basename="checkpoint")
router.register("suites", views.SuiteViewSet, basename="suite")
router.register("audits", views.AuditViewSet, basename="audit")
router.register("events", views.EventViewSet, basename="event")

urlpatterns = [
    path("gate/", views.GateView.as_view(), name="api-gate"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    *router.urls,
]
