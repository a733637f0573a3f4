from django.urls import path

from models_registry import views

app_name = "registry"
urlpatterns = [
    path("", views.checkpoint_list, name="list"),
    path("register/", views.checkpoint_register_view, name="register"),
    path("<slug:name>/", views.checkpoint_detail, name="detail"),
    path("<slug:name>/alias/", views.checkpoint_alias, name="alias"),
]
