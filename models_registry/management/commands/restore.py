from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from models_registry.backup import BackupError, VerificationFailed, describe_counts, restore_archive


class Command(BaseCommand):
    help = (
        "Restore a `backup` archive into the configured database, which must be new or freshly "
        "migrated and empty, and its files into KEEL_MODELS_DIR; then verify row counts, "
        "checkpoint fingerprints and the audit log."
    )
    # Reads and writes no URL or view: skipping the system checks spares loading the ML stack.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("file", help="an archive written by `manage.py backup`")

    def handle(self, *args, file: str, **options):
        try:
            summary = restore_archive(archive=Path(file).expanduser())
        except VerificationFailed as exc:
            raise CommandError(str(exc), returncode=1) from None
        except BackupError as exc:
            raise CommandError(str(exc), returncode=2) from None
        made = summary.manifest
        log = summary.audit_log
        self.stdout.write(
            f"Restored {file} (Keel {made['keel_version']}, made {made['created_at'][:19]} on "
            f"{made['database']['vendor']}) into {summary.database} in {summary.seconds:.1f} s.\n"
            f"  Database: {describe_counts(summary.counts)}; counts match the archive.\n"
            f"  Files: {summary.files_written} written ({summary.bytes_written / 1e6:,.1f} MB), "
            f"{summary.files_present} already here and identical.\n"
            f"  Checkpoints: {summary.fingerprints_ok} of {summary.checkpoints} match their "
            "fingerprints"
            + (f"; {summary.relocated} moved to this KEEL_MODELS_DIR" if summary.relocated else "")
            + ".\n"
            f"  Audit log: {log['events']} event(s), "
            + ("intact" if log["intact"] else "as broken as when backed up")
            + f"; head {log['head']}"
        )  # fmt: skip
        if summary.migrated_forward:
            self.stdout.write(f"  Then applied {summary.migrated_forward} newer migration(s).")
        for warning in summary.warnings:
            self.stderr.write(f"Warning: {warning}")
