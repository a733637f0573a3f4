from django.apps import AppConfig


class GpuTasksConfig(AppConfig):
    name = "gpu_tasks"
    verbose_name = "GPU tasks"

    def ready(self) -> None:
        from gpu_tasks import workers  # noqa: F401  (connects the worker's signals)
