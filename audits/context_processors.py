from django.conf import settings

from models_registry.roles import can_operate


def keel(request) -> dict:
    return {
        "keel_version": settings.KEEL_VERSION,
        "min_cell_items": settings.KEEL_MIN_CELL_ITEMS,
        "user_can_operate": can_operate(request.user) if hasattr(request, "user") else False,
    }
