from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from models_registry.backup import BackupError, backup_target, backup_write, describe_counts


class Command(BaseCommand):
    help = (
        "Back up the database and the registry's files (KEEL_MODELS_DIR) into one .tar.gz "
        "with a manifest of SHA-256 hashes; `restore` reads it."
    )
    # Reads and writes no URL or view: skipping the system checks spares loading the ML stack.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("file", help="the archive to write, e.g. keel-2025-01-31.tar.gz")
        parser.add_argument(
            "--include-external", action="store_true",
            help="also archive the files of checkpoints registered from folders outside "
            "KEEL_MODELS_DIR (by default they are referenced by path and fingerprint)",
        )  # fmt: skip
        parser.add_argument("--force", action="store_true", help="replace FILE if it exists")

    def handle(self, *args, file: str, include_external: bool, force: bool, **options):
        try:
            summary = backup_write(
                target=backup_target(file, force=force), include_external=include_external
            )
        except BackupError as exc:
            raise CommandError(str(exc), returncode=2) from None
        for warning in summary.warnings:
            self.stderr.write(f"Warning: {warning}")
        log = summary.audit_log
        self.stdout.write(
            f"Wrote {summary.path} ({summary.size / 1e6:,.1f} MB) in {summary.seconds:.1f} s.\n"
            f"  Database: {describe_counts(summary.counts)}.\n"
            f"  Files: {summary.files} ({summary.file_bytes / 1e6:,.1f} MB)"
            + (f", with {summary.external_archived} external checkpoint(s)"
               if summary.external_archived else "")
            + ".\n"
            f"  Audit log: {log['events']} event(s), "
            + ("intact" if log["intact"] else f"BROKEN ({log['problem']})")
            + f"; head {log['head']}"
        )  # fmt: skip
        if summary.external_referenced:
            names = ", ".join(summary.external_referenced)
            self.stdout.write(
                f"  Referenced by path only (outside KEEL_MODELS_DIR): {names}. Back their "
                "files up too, or pass --include-external."
            )
