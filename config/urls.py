from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="audits:list"), name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("checkpoints/", include("models_registry.urls")),
    path("audits/", include("audits.urls")),
    path("suites/", include("audits.suite_urls")),
    path("admin/", admin.site.urls),
]
