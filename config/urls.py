from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from audits import compliance_views
from audits import views as audit_views
from config.lockout import LockoutAuthenticationForm

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="audits:list"), name="home"),
    path(
        "login/",
        auth_views.LoginView.as_view(authentication_form=LockoutAuthenticationForm),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("checkpoints/", include("models_registry.urls")),
    path("audits/", include("audits.urls")),
    path("suites/", include("audits.suite_urls")),
    path("items/", audit_views.item_results, name="items"),
    path("compare/", audit_views.compare, name="compare"),
    re_path(
        r"^charts/(?P<name>[a-z-]+)\.(?P<fmt>json|csv)$", audit_views.chart_data, name="chart"
    ),  # fmt: skip
    re_path(
        r"^checkpoints/(?P<name>[-a-zA-Z0-9_]+)/export\.(?P<fmt>pdf|json|csv)$",
        compliance_views.report_card_export,
        name="report-card-export",
    ),  # fmt: skip
    re_path(
        r"^audits/(?P<audit_id>[0-9]+)/export\.(?P<fmt>pdf|json|csv)$",
        compliance_views.audit_export,
        name="audit-export",
    ),  # fmt: skip
    path("auditlog/", compliance_views.audit_log, name="auditlog"),
    path("account/token/", compliance_views.api_token, name="api-token"),
    path("api/v1/", include("audits.api.urls")),
    path("admin/", admin.site.urls),
    path("healthz", include("config.health")),  # no login: for load balancers and monitors
]
