from django.urls import path

from audits import suite_views

app_name = "suites"
urlpatterns = [
    path("", suite_views.suite_list, name="list"),
    path("import/", suite_views.suite_import, name="import"),
    path("<slug:name>/", suite_views.suite_detail, name="detail"),
]
