from django.urls import path

from audits.consumers import AuditProgressConsumer

websocket_urlpatterns = [
    path("ws/audits/<int:audit_id>/", AuditProgressConsumer.as_asgi()),
]
