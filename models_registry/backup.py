"""Back up and restore a Keel installation: the database and the registry's files in one
``.tar.gz``, with a manifest that holds the SHA-256 of every member.

Archive members:

    database.keeljsonl.gz   every row (Django serialized data, `serialization.NAME`)
    models/<path>           every file under KEEL_MODELS_DIR (default model, trained models)
    external/<abs path>     with --include-external: the files of checkpoints registered
                            from other folders, to be put back where they were
    manifest.json           last: Keel version, date, database, migrations, row counts,
                            checkpoints with their fingerprint status, the audit log's head,
                            and each member's SHA-256 and size

The backup reads the database in one snapshot (REPEATABLE READ on PostgreSQL, a deferred
read transaction on SQLite), so runs writing meanwhile never leave half a state in it.
A restore checks the whole archive before it writes anything, fills only an empty database,
never overwrites a file that differs, and verifies what it loaded before it commits.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from django.apps import apps
from django.conf import settings
from django.core import serializers
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import OperationalError, connection, transaction
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

from models_registry import serialization
from models_registry.inspection import fingerprint
from models_registry.roles import ROLES

FORMAT = "keel-backup"
VERSION = 1
MANIFEST = "manifest.json"
DATABASE = f"database.{serialization.NAME}.gz"  # loaddata reads the format from the name
MODELS, EXTERNAL = "models/", "external/"
# Rebuilt by `migrate` in every database (content types, permissions) or not worth keeping
# (sessions: people sign in again).
EXCLUDED = ("contenttypes.contenttype", "auth.permission", "sessions.session")
CHUNK = 1 << 20

serializers.register_serializer(serialization.NAME, "models_registry.serialization")


class BackupError(ValueError):
    """Bad input or an archive Keel refuses; the message says what to do."""


class VerificationFailed(BackupError):
    """What was loaded does not match the archive; nothing was committed."""


# --- What a backup holds ------------------------------------------------------------------


def dumped_models(*, with_m2m: bool = False) -> list:
    """Every model whose rows a backup carries (with_m2m: also many-to-many tables, which
    travel inside their owners' rows but are counted on their own)."""
    return [
        model
        for model in apps.get_models(include_auto_created=with_m2m)
        if model._meta.label_lower not in EXCLUDED and model._meta.managed and not model._meta.proxy
    ]


def row_counts() -> dict[str, int]:
    """Rows per model (and per many-to-many table) in the configured database; tables that
    do not exist yet count as empty."""
    tables = set(connection.introspection.table_names())
    return {
        model._meta.label_lower: model._base_manager.count()
        if model._meta.db_table in tables
        else 0
        for model in dumped_models(with_m2m=True)
    }


def stored_data() -> dict[str, int]:
    """The rows a database holds beyond what `migrate` creates (Keel's role groups)."""
    counts = row_counts()
    from django.contrib.auth.models import Group

    if counts.get("auth.group"):
        counts["auth.group"] = Group.objects.exclude(name__in=ROLES).count()
    return {label: n for label, n in counts.items() if n}


def weight_files(path: Path, fmt: str) -> tuple[Path, ...]:
    """The files a checkpoint's fingerprint covers (as `inspection` chooses them)."""
    if fmt == "gguf":
        return (path,)
    if fmt == "peft":
        return (path / "adapter_model.safetensors",)
    return tuple(sorted(path.glob("*.safetensors")))


def fingerprint_status(path: Path, fmt: str, expected: str) -> str:
    """Whether the files still match: "ok", "missing" (no weight files there) or "differs"."""
    files = weight_files(path, fmt) if path.exists() else ()
    if not files or not all(f.is_file() for f in files):
        return "missing"
    return "ok" if fingerprint(files) == expected else "differs"


def _under(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def _checkpoint_files(path: Path) -> list[Path]:
    """A checkpoint's own files: the .gguf file, or the folder's top-level files."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_file() and not p.is_symlink())


def _models_dir_files(root: Path) -> Iterator[Path]:
    """Regular files under KEEL_MODELS_DIR, skipping half-published copies (*.partial)."""
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.endswith(".partial"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


# --- Backup -------------------------------------------------------------------------------


@dataclass
class BackupSummary:
    path: Path
    size: int
    seconds: float
    counts: dict[str, int]
    files: int
    file_bytes: int
    external_archived: int
    external_referenced: list[str]
    audit_log: dict
    warnings: list[str] = field(default_factory=list)


class _HashingReader:
    def __init__(self, raw):
        self.raw, self.digest = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data


def _add(tar: tarfile.TarFile, name: str, source: Path) -> dict:
    info = tarfile.TarInfo(name)
    stat = source.stat()
    info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
    with source.open("rb") as f:
        reader = _HashingReader(f)
        tar.addfile(info, reader)
    return {"sha256": reader.digest.hexdigest(), "size": info.size}


def backup_target(raw: str, *, force: bool) -> Path:
    path = Path(raw).expanduser()
    folder = path.resolve().parent
    if not folder.is_dir():
        raise BackupError(
            f"Cannot write {raw}: folder {folder} does not exist. Create it, or give a file "
            "in an existing folder."
        )
    if path.is_dir():
        raise BackupError(f"{raw} is a folder; give a file name such as {path / 'keel.tar.gz'}.")
    if path.exists() and not force:
        raise BackupError(
            f"{raw} already exists. Choose another name (a date in it helps), or pass --force "
            "to replace it."
        )
    return path.resolve()


@contextmanager
def _snapshot() -> Iterator[None]:
    """One read-only snapshot of the database for everything read inside."""
    if connection.in_atomic_block:  # called inside a transaction: that one is the snapshot
        with transaction.atomic():
            yield
        return
    if connection.vendor == "sqlite":
        # A deferred BEGIN takes its snapshot at the first read and, under WAL, lets
        # writers go on; Keel's usual BEGIN IMMEDIATE would block them for the whole dump.
        connection.ensure_connection()  # the mode is read from the settings on connecting
        mode, connection.transaction_mode = connection.transaction_mode, None
        try:
            with transaction.atomic():
                yield
        finally:
            connection.transaction_mode = mode
        return
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def backup_write(*, target: Path, include_external: bool) -> BackupSummary:
    """Write the archive to `target` (through a temporary name, so a failed or interrupted
    backup leaves no partial archive and an existing one is replaced in one step)."""
    from audits.trail import verify
    from models_registry.models import Checkpoint

    started = time.monotonic()
    connect()
    models_dir = Path(settings.KEEL_MODELS_DIR).resolve()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".keel-backup-") as work:
        dump = Path(work) / DATABASE
        with _snapshot():
            recorder = MigrationRecorder(connection)
            migrations = sorted(recorder.applied_migrations())
            counts = row_counts()
            verdict = verify()
            groups = sorted(_group_names())
            checkpoints = list(Checkpoint.objects.order_by("pk").values(
                "name", "path", "format", "fingerprint"))  # fmt: skip
            with gzip.open(dump, "wb") as raw, io.TextIOWrapper(raw, encoding="utf-8") as out:
                call_command(
                    "dumpdata", format=serialization.NAME, exclude=list(EXCLUDED),
                    use_natural_foreign_keys=True, use_natural_primary_keys=True,
                    use_base_manager=True, stdout=out, verbosity=0,
                )  # fmt: skip
            database = {
                "vendor": connection.vendor,
                "engine": settings.DATABASES["default"]["ENGINE"],
                "version": ".".join(str(p) for p in connection.get_database_version()),
            }

        warnings = []
        for ck in checkpoints:
            path = Path(ck["path"])
            ck["status"] = fingerprint_status(path, ck["format"], ck["fingerprint"])
            ck["stored"] = "models" if _under(path, models_dir) else "external"
            if ck["status"] != "ok":
                state = "missing" if ck["status"] == "missing" else "changed since registration"
                warnings.append(f"{ck['name']}: its files at {path} are {state}; the archive "
                                "records this.")  # fmt: skip

        partial = target.with_name(target.name + ".partial")
        members: dict[str, dict] = {}
        external_files: dict[str, Path] = {}
        if include_external:
            for ck in checkpoints:
                files = _checkpoint_files(Path(ck["path"]))
                if ck["stored"] == "external" and files:
                    for f in files:
                        external_files[EXTERNAL + str(f).lstrip("/")] = f
                    ck["stored"] = "external, archived"
        partial.unlink(missing_ok=True)
        partial.touch(mode=0o600)  # it holds password hashes and API tokens
        try:
            with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
                members[DATABASE] = _add(tar, DATABASE, dump)
                for f in _models_dir_files(models_dir):
                    name = MODELS + f.relative_to(models_dir).as_posix()
                    members[name] = _add(tar, name, f)
                for name, f in external_files.items():
                    members[name] = _add(tar, name, f)
                manifest = {
                    "format": FORMAT,
                    "version": VERSION,
                    "keel_version": settings.KEEL_VERSION,
                    "created_at": timezone.now().isoformat(),
                    "database": database,
                    "migrations": [list(m) for m in migrations],
                    "counts": counts,
                    "groups": groups,
                    "audit_log": {"events": verdict.events, "head": verdict.head,
                                  "intact": verdict.intact, "problem": verdict.problem},
                    "models_dir": str(models_dir),
                    "checkpoints": checkpoints,
                    "members": members,
                }  # fmt: skip
                body = json.dumps(manifest, indent=1, sort_keys=True).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mtime, info.mode = len(body), int(time.time()), 0o644
                tar.addfile(info, io.BytesIO(body))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    data_members = [m for name, m in members.items() if name != DATABASE]
    return BackupSummary(
        path=target,
        size=target.stat().st_size,
        seconds=time.monotonic() - started,
        counts=counts,
        files=len(data_members),
        file_bytes=sum(m["size"] for m in data_members),
        external_archived=sum(1 for c in checkpoints if c["stored"] == "external, archived"),
        external_referenced=[c["name"] for c in checkpoints if c["stored"] == "external"],
        audit_log=manifest["audit_log"],
        warnings=warnings,
    )


def _group_names() -> list[str]:
    from django.contrib.auth.models import Group

    return list(Group.objects.values_list("name", flat=True))


# --- Reading an archive -------------------------------------------------------------------


def _member_target(name: str) -> Path | None:
    """Where a file member goes on this server (None for the database and the manifest);
    refuses names that would climb out of their folder."""
    if name in (DATABASE, MANIFEST):
        return None
    for prefix, base in ((MODELS, Path(settings.KEEL_MODELS_DIR).resolve()), (EXTERNAL, Path("/"))):
        if name.startswith(prefix):
            rest = PurePosixPath(name[len(prefix) :])
            if rest.parts and not {"..", ".", ""} & set(rest.parts) and not rest.is_absolute():
                return base.joinpath(*rest.parts)
    raise BackupError(
        f"The archive holds an unexpected member {name!r}: it is not a Keel backup, or it was "
        "altered. Nothing was restored."
    )


def read_manifest(archive: Path) -> dict:
    """The archive's manifest, once every member is read and matches its SHA-256 and size.
    Refuses a damaged, truncated or altered archive before anything is written."""
    if not archive.is_file():
        raise BackupError(f"{archive} does not exist or is not a file; give a backup archive.")
    seen: dict[str, dict] = {}
    body = None
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                if not member.isfile():
                    raise BackupError(
                        f"The archive holds {member.name!r}, which is not a plain file: it is "
                        "not a Keel backup. Nothing was restored."
                    )
                _member_target(member.name)
                if member.name in seen:
                    raise BackupError(f"The archive holds {member.name!r} twice: it was altered. "
                                      "Nothing was restored.")  # fmt: skip
                source = tar.extractfile(member)
                if member.name == MANIFEST:
                    body = source.read()
                    continue
                digest = hashlib.sha256()
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                seen[member.name] = {"sha256": digest.hexdigest(), "size": member.size}
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BackupError(
            f"{archive} is damaged or incomplete ({exc}). Nothing was restored; use another "
            "copy of the backup."
        ) from None
    if body is None:
        raise BackupError(f"{archive} has no {MANIFEST}: it is not a Keel backup, or it was cut "
                          "short. Nothing was restored; use another copy.")  # fmt: skip
    try:
        manifest = json.loads(body)
    except ValueError:
        raise BackupError(
            f"{archive}'s {MANIFEST} is not valid JSON. Nothing was restored."
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(
            f"{archive} is not a Keel backup (see its manifest). Nothing was restored."
        )
    if manifest.get("version") != VERSION:
        raise BackupError(
            f"{archive} is a version {manifest.get('version')} Keel backup; this Keel reads "
            f"version {VERSION}. Restore it with a matching Keel."
        )
    expected = manifest.get("members") or {}
    missing = sorted(set(expected) - set(seen))
    extra = sorted(set(seen) - set(expected))
    altered = sorted(n for n in set(seen) & set(expected) if seen[n] != expected[n])
    for names, problem in (
        (missing, "is missing {}, listed in its manifest: it was cut short or altered"),
        (extra, "holds {}, not listed in its manifest: it was altered"),
        (altered, "holds {} whose SHA-256 does not match the manifest: it is damaged or "
                  "was altered"),
    ):  # fmt: skip
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise BackupError(f"{archive} {problem.format(shown)}. Nothing was restored; use "
                              "another copy of the backup.")  # fmt: skip
    if DATABASE not in seen:
        raise BackupError(f"{archive} holds no database dump; it is not a complete Keel backup.")
    return manifest


# --- Restore ------------------------------------------------------------------------------


@dataclass
class RestoreSummary:
    manifest: dict
    database: str
    seconds: float
    counts: dict[str, int]
    files_written: int
    files_present: int
    bytes_written: int
    audit_log: dict
    fingerprints_ok: int
    checkpoints: int
    relocated: int
    migrated_forward: int
    warnings: list[str] = field(default_factory=list)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def database_name() -> str:
    return str(settings.DATABASES["default"]["NAME"])


def connect() -> None:
    try:
        connection.ensure_connection()
    except OperationalError as exc:
        reason = (str(exc).strip().splitlines() or ["no reason given"])[-1]
        raise BackupError(
            f"Cannot connect to the database {database_name()} ({reason}). Check DATABASE_URL; "
            "to restore into a new PostgreSQL database, create it first (`createdb NAME`)."
        ) from None


def _refuse_unless_empty() -> None:
    stored = stored_data()
    if stored:
        shown = ", ".join(
            f"{n:,} {apps.get_model(label)._meta.verbose_name_plural}"
            for label, n in sorted(stored.items(), key=lambda kv: -kv[1])[:4]
        )
        raise BackupError(
            f"The database {database_name()} already holds Keel data ({shown}"
            f"{', ...' if len(stored) > 4 else ''}). Restore only fills an empty database, so "
            "that nothing stored is overwritten. Create a new database (for example `createdb "
            "keel_restored`) and point DATABASE_URL at it, or in embedded mode set "
            "KEEL_DATA_DIR to a new folder; then run restore again (it migrates the new "
            "database itself)."
        )


def _migration_plan(manifest: dict) -> tuple[set, MigrationLoader]:
    """The archive's migration state, if this Keel knows every migration in it and this
    database has nothing applied beyond it."""
    state = {tuple(m) for m in manifest["migrations"]}
    loader = MigrationLoader(connection, ignore_no_migrations=True)
    unknown = sorted(state - set(loader.graph.nodes))
    if unknown:
        shown = ", ".join(f"{app}.{name}" for app, name in unknown[:3])
        raise BackupError(
            f"The archive was made by a newer Keel ({manifest.get('keel_version')}; this one "
            f"lacks the migrations {shown}). Upgrade Keel here first, then restore."
        )
    ahead = sorted(set(loader.applied_migrations) - state)
    if ahead:
        shown = ", ".join(f"{app}.{name}" for app, name in ahead[:3])
        raise BackupError(
            f"The database {database_name()} is migrated past the archive ({shown}); the data "
            "must load into the schema it was saved from. Restore into a new database that "
            "nobody has migrated yet: restore migrates it itself."
        )
    return state, loader


def _migrate_to(state: set, loader: MigrationLoader) -> None:
    """Apply migrations up to the archive's state; with an archive from this Keel, all."""
    if state == set(loader.applied_migrations):
        return
    if state == set(loader.graph.nodes):
        call_command("migrate", verbosity=0, interactive=False)
        return
    for app in sorted({app for app, _ in state}):
        names = {node for node in state if node[0] == app}
        for node in sorted(names):
            if not loader.graph.node_map[node].children & names:  # the app's last one
                call_command("migrate", app, node[1], verbosity=0, interactive=False)


def _file_plan(manifest: dict) -> tuple[dict[str, Path], set[str]]:
    """Where each file member goes, and which are already there, identical. Refuses files
    that exist with other contents, and external files outside this server's roots."""
    roots = [Path(r).resolve() for r in settings.KEEL_CHECKPOINT_ROOTS]
    targets, present, conflicts, outside = {}, set(), [], set()
    for name, meta in sorted(manifest["members"].items()):
        target = _member_target(name)
        if target is None:
            continue
        if name.startswith(EXTERNAL) and not any(_under(target, root) for root in roots):
            outside.add(str(target.parent))
        if target.exists() or target.is_symlink():
            if target.is_file() and _sha256(target) == meta["sha256"]:
                present.add(name)
            else:
                conflicts.append(target)
        targets[name] = target
    if outside:
        raise BackupError(
            f"The archive holds checkpoint files for {', '.join(sorted(outside))}, outside "
            f"KEEL_CHECKPOINT_ROOTS here ({', '.join(str(r) for r in roots)}). Add their folder "
            "to KEEL_CHECKPOINT_ROOTS, as on the old server, and run restore again."
        )
    if conflicts:
        raise BackupError(
            f"{len(conflicts)} file(s) in the archive already exist here with other contents "
            f"(for example {conflicts[0]}). Restore never overwrites files: move them aside, "
            "or restore with a new KEEL_DATA_DIR, and run it again."
        )
    return targets, present


def _extract(archive: Path, manifest: dict, targets: dict[str, Path], present: set[str],
             work: Path, written: list[Path]) -> Path:  # fmt: skip
    """Write the database dump into `work` and the files into place (each through a
    temporary name, checked against its SHA-256); returns the dump's path."""
    dump = work / DATABASE
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                if member.name == MANIFEST or member.name in present:
                    continue
                target = dump if member.name == DATABASE else targets[member.name]
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".restoring")
                digest = hashlib.sha256()
                source = tar.extractfile(member)
                with partial.open("wb") as out:
                    while chunk := source.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                if digest.hexdigest() != manifest["members"][member.name]["sha256"]:
                    partial.unlink()
                    raise BackupError(f"{archive} changed while it was restored ({member.name}).")
                if target != dump and target.exists():
                    partial.unlink()
                    raise BackupError(
                        f"{target} appeared while restoring; nothing was overwritten. Move it "
                        "aside and run restore again."
                    )
                os.utime(partial, (member.mtime, member.mtime))
                os.replace(partial, target)
                if target != dump:
                    written.append(target)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BackupError(f"Could not read {archive} while restoring ({exc}).") from None
    return dump


@contextmanager
def _role_events_paused() -> Iterator[None]:
    """Loading a user's groups sets them again, which Keel would log as role changes: the
    restored log already holds the changes that happened."""
    from django.contrib.auth.models import User
    from django.db.models.signals import m2m_changed

    from audits import signals

    through = User.groups.through
    m2m_changed.disconnect(sender=through, dispatch_uid="keel-roles")  # as audits.apps connects
    try:
        yield
    finally:
        m2m_changed.connect(signals.roles_changed, sender=through, dispatch_uid="keel-roles")


def _relocate(manifest: dict) -> int:
    """Checkpoints that lived under the old KEEL_MODELS_DIR now live under this one."""
    from models_registry.models import Checkpoint

    old, new = Path(manifest["models_dir"]), Path(settings.KEEL_MODELS_DIR).resolve()
    if old == new:
        return 0
    moved = 0
    for pk, path in Checkpoint.objects.values_list("pk", "path"):
        if _under(Path(path), old):
            Checkpoint.objects.filter(pk=pk).update(path=str(new / Path(path).relative_to(old)))
            moved += 1
    return moved


def _reset_sequences() -> None:
    """So that new rows get ids after the restored ones (`sqlsequencereset`)."""
    tables = set(connection.introspection.table_names())  # at an older archive's state
    models = [m for m in dumped_models() if m._meta.db_table in tables]
    with connection.cursor() as cursor:
        for sql in connection.ops.sequence_reset_sql(no_style(), models):
            cursor.execute(sql)


def _verify(manifest: dict) -> tuple[dict, dict, tuple[int, int], list[str]]:
    """Row counts, the audit log and checkpoint fingerprints against the manifest; raises
    VerificationFailed on any difference that the restore itself would have caused."""
    from audits.trail import verify
    from models_registry.models import Checkpoint

    counts, expected = row_counts(), manifest["counts"]
    differ = [
        f"{label} {counts.get(label, 0):,} (archive {expected.get(label, 0):,})"
        for label in sorted(set(counts) | set(expected))
        if counts.get(label, 0) != expected.get(label, 0)
    ]
    if differ:
        raise VerificationFailed(
            f"After loading, row counts differ from the archive's: {'; '.join(differ[:5])}. "
            "Nothing was committed."
        )
    log = manifest["audit_log"]
    verdict = verify()
    if (verdict.events, verdict.head, verdict.intact) != (log["events"], log["head"],
                                                          log["intact"]):  # fmt: skip
        raise VerificationFailed(
            f"The restored audit log does not match the archive's ({verdict.events} events, "
            f"head {verdict.head[:12]}; archive {log['events']}, head {log['head'][:12]}): "
            f"{verdict.problem or 'events differ'}. Nothing was committed."
        )
    warnings = []
    if not log["intact"]:
        warnings.append(f"The audit log was already broken when the backup was made: "
                        f"{log['problem']}.")  # fmt: skip
    recorded = {c["name"]: c for c in manifest["checkpoints"]}
    ok = 0
    checkpoints = list(Checkpoint.objects.order_by("pk"))
    for ck in checkpoints:
        status = fingerprint_status(Path(ck.path), ck.format, ck.fingerprint)
        then = recorded.get(ck.name, {})
        if status == "ok":
            ok += 1
        elif then.get("status") != "ok":
            warnings.append(f"{ck.name}: its files were already {then.get('status')} when the "
                            f"backup was made ({ck.path}).")  # fmt: skip
        elif then.get("stored") == "external":
            warnings.append(
                f"{ck.name}: its files were not archived and are "
                + ("not at " if status == "missing" else "different at ")
                + f"{ck.path} on this server. Copy the right files there before auditing it."
            )  # fmt: skip
        else:
            raise VerificationFailed(
                f"{ck.name}: the restored files at {ck.path} do not match its fingerprint "
                f"({status}). Nothing was committed."
            )
    audit_log = {"events": verdict.events, "head": verdict.head, "intact": verdict.intact}
    return counts, audit_log, (ok, len(checkpoints)), warnings


def restore_archive(*, archive: Path) -> RestoreSummary:
    """Fill the configured, empty database and KEEL_MODELS_DIR from an archive. The archive
    is checked whole before anything is written; the rows load and are verified in one
    transaction; files written for a restore that then fails are removed again."""
    started = time.monotonic()
    manifest = read_manifest(archive)
    connect()
    _refuse_unless_empty()
    state, loader = _migration_plan(manifest)
    targets, present = _file_plan(manifest)
    _migrate_to(state, loader)
    written: list[Path] = []
    try:
        with tempfile.TemporaryDirectory(
            dir=settings.KEEL_DATA_DIR, prefix=".keel-restore-"
        ) as work:
            dump = _extract(archive, manifest, targets, present, Path(work), written)
            with transaction.atomic(), _role_events_paused():
                call_command("loaddata", str(dump), verbosity=0)
                _drop_role_groups_the_archive_lacks(manifest)
                relocated = _relocate(manifest)
                _reset_sequences()
                counts, audit_log, (ok, total), warnings = _verify(manifest)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    after = MigrationLoader(connection, ignore_no_migrations=True)
    forward = set(after.graph.nodes) - set(after.applied_migrations)
    if forward:  # the archive came from an older Keel: bring its data up to this one
        call_command("migrate", verbosity=0, interactive=False)
    return RestoreSummary(
        manifest=manifest,
        database=database_name(),
        seconds=time.monotonic() - started,
        counts=counts,
        files_written=len(written),
        files_present=len(present),
        bytes_written=sum(manifest["members"][n]["size"] for n in targets if n not in present),
        audit_log=audit_log,
        fingerprints_ok=ok,
        checkpoints=total,
        relocated=relocated,
        migrated_forward=len(forward),
        warnings=warnings,
    )


def _drop_role_groups_the_archive_lacks(manifest: dict) -> None:
    """`migrate` made every role group here; one the old server had deleted goes again."""
    from django.contrib.auth.models import Group

    Group.objects.filter(name__in=ROLES).exclude(name__in=manifest["groups"]).delete()


def describe_counts(counts: dict[str, int]) -> str:
    """Counts of the models people know ("3 users, 2 checkpoints"), then the total."""
    shown = []
    for label in ("auth.user", "models_registry.checkpoint", "audits.suite", "audits.item",
                  "audits.audit", "audits.run", "audits.itemresult", "audits.score",
                  "audits.event", "authtoken.token"):  # fmt: skip
        if label in counts:
            model = apps.get_model(label)
            names = model._meta.verbose_name, model._meta.verbose_name_plural
            shown.append(f"{counts[label]:,} {names[counts[label] != 1].lower()}")
    tables = sum(1 for n in counts.values() if n)
    return f"{', '.join(shown)}; {sum(counts.values()):,} rows in {tables} tables in all"
