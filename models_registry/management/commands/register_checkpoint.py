from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from models_registry.inspection import CheckpointError
from models_registry.services import checkpoint_register


class Command(BaseCommand):
    help = "Validate and register a checkpoint (Hugging Face folder or .gguf file)."

    def add_arguments(self, parser):
        parser.add_argument("path", help="model folder or .gguf file under KEEL_CHECKPOINT_ROOTS")
        parser.add_argument("--name", required=True, help="unique name: lower-case, digits, -")
        parser.add_argument("--notes", default="")
        parser.add_argument("--tag", action="append", default=[], dest="tags")

    def handle(self, *args, path: str, name: str, notes: str, tags: list[str], **options):
        try:
            checkpoint = checkpoint_register(path=path, name=name, notes=notes, tags=tags)
        except CheckpointError as exc:
            raise CommandError(str(exc), returncode=2) from None
        self.stdout.write(
            f"Registered {checkpoint.name}: {checkpoint.architecture}, "
            f"{checkpoint.parameters_human} parameters, {checkpoint.dtype}, "
            f"fingerprint {checkpoint.fingerprint[:12]}"
        )
