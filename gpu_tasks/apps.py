from django.apps import AppConfig


class GpuTasksConfig(AppConfig):
    name = "gpu_tasks"
    verbose_name = "GPU tasks"
