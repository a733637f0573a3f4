from django.urls import path

from audits import views

app_name = "audits"
urlpatterns = [
    path("", views.audit_list, name="list"),
    path("new/", views.audit_new, name="new"),
    path("workers/", views.workers, name="workers"),
    path("<int:audit_id>/", views.audit_detail, name="detail"),
    path("<int:audit_id>/cancel/", views.audit_cancel_view, name="cancel"),
    path("<int:audit_id>/retry/", views.audit_retry_view, name="retry"),
]
