from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from models_registry.inspection import CheckpointError
from models_registry.models import Checkpoint
from models_registry.services import checkpoint_register


class Command(BaseCommand):
    help = (
        "Validate and register a checkpoint: a Hugging Face folder (a language model, or a "
        "one-output reward model), a .gguf file, or a LoRA adapter folder with --parent."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", help="model folder or .gguf file under KEEL_CHECKPOINT_ROOTS")
        parser.add_argument("--name", required=True, help="unique name: lower-case, digits, -")
        parser.add_argument("--notes", default="")
        parser.add_argument("--tag", action="append", default=[], dest="tags")
        parser.add_argument("--parent", help="for a LoRA adapter: the checkpoint it was trained on")

    def handle(self, *args, path: str, name: str, notes: str, tags: list[str], **options):
        parent = None
        if options["parent"]:
            parent = Checkpoint.objects.filter(name=options["parent"]).first()
            if parent is None:
                raise CommandError(f"No checkpoint named {options['parent']!r}.", returncode=2)
        try:
            checkpoint = checkpoint_register(
                path=path, name=name, notes=notes, tags=tags, parent=parent
            )
        except CheckpointError as exc:
            raise CommandError(str(exc), returncode=2) from None
        self.stdout.write(
            f"Registered {checkpoint.name} ({checkpoint.get_kind_display().lower()}): "
            f"{checkpoint.architecture}, "
            f"{checkpoint.parameters_human} parameters, {checkpoint.dtype}, "
            f"fingerprint {checkpoint.fingerprint[:12]}"
        )
