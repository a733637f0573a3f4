from django.conf import settings

from models_registry.roles import can_export, can_manage, can_operate


def keel(request) -> dict:
    user = getattr(request, "user", None)
    return {
        "keel_version": settings.KEEL_VERSION,
        "min_cell_items": settings.KEEL_MIN_CELL_ITEMS,
        "user_can_operate": user is not None and can_operate(user),
        "user_can_export": user is not None and can_export(user),
        "user_can_manage": user is not None and can_manage(user),
    }
