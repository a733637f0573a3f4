"""Backup and restore through the real commands: data made with tiny random models (two
evaluated checkpoints, users with roles, an API token, an alias, the audit log), backed up
by `manage.py backup` and restored by `manage.py restore` in subprocesses into a fresh
PostgreSQL database and a fresh data folder, then compared with the original; and every
refusal of bad input."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import psycopg
import psycopg.sql
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from rest_framework.authtoken.models import Token

from audits.builtin import KEEL_LICENSE, SUITES_DIR
from audits.export import data_sha256, report_card_document
from audits.models import Audit, Event, Suite
from audits.services import audit_create
from audits.suite_io import parse_jsonl, suite_store
from audits.trail import Action, record, verify
from gpu_tasks.evaluate import run_evaluation
from models_registry.backup import DATABASE, MANIFEST, row_counts
from models_registry.models import Alias, Checkpoint
from models_registry.roles import ADMIN, COMPLIANCE, OPERATOR, VIEWER
from models_registry.services import checkpoint_register
from tests.conftest import build_tiny_llama, make_user
from tests.integration.conftest import database_url_for_worker

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

NAMES = ("bk-base", "bk-variant")
PASSWORD = "pw-for-tests-only"  # make_user's

# Run inside the restored installation: each card's data document (what `audit export`
# writes), the audit log, sign-in, token and roles, then new rows of several kinds.
AFTER_RESTORE = """
import json, django
django.setup()
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from audits.export import report_card_document
from audits.models import Audit, Suite
from audits.services import audit_create
from audits.suite_io import parse_jsonl, suite_store
from audits.trail import Action, record, verify
from models_registry.backup import fingerprint_status
from models_registry.models import Alias, Checkpoint
from pathlib import Path

before = verify()
out = {
    "cards": {n: report_card_document(Checkpoint.objects.get(name=n)) for n in %(names)r},
    "log": [before.events, before.head, before.intact],
    "signed_in": authenticate(username="bk-viewer", password=%(password)r) is not None,
    "token_user": Token.objects.get(key=%(token)r).user.username,
    "roles": {u.username: sorted(u.groups.values_list("name", flat=True))
              for u in User.objects.filter(username__startswith="bk-")},
    "alias": Alias.objects.get(name="bk-production").checkpoint.name,
    "fingerprints": {c.name: fingerprint_status(Path(c.path), c.format, c.fingerprint)
                     for c in Checkpoint.objects.filter(name__in=%(names)r)},
    "max_ids": {"user": User.objects.order_by("-pk")[0].pk,
                "audit": Audit.objects.order_by("-pk")[0].pk},
}
user = User.objects.create_user("bk-after-restore", password="another-pw-for-tests")
audit = audit_create(checkpoint=Checkpoint.objects.get(name="bk-variant"),
                     suites=list(Suite.objects.filter(name="bk-sample")), samples=0)
event = record(Action.EXPORT, audit, actor=user)
after = verify()
out["new"] = {"user": user.pk, "audit": audit.pk, "run": audit.runs.get().pk,
              "event": event.pk, "log": [after.events, after.intact]}
print(json.dumps(out))
"""

# Run against a second fresh database: damaged archives are refused before anything is
# written; an archive whose rows do not match its manifest is rolled back, files and all.
BAD_ARCHIVES = """
import json, django
django.setup()
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from models_registry.backup import stored_data

def refused(path):
    try:
        call_command("restore", path)
    except CommandError as exc:
        return [exc.returncode, str(exc)]
    return [0, "restored"]

def files():
    return sorted(str(p) for p in settings.KEEL_MODELS_DIR.rglob("*") if p.is_file())

out = {name: refused(path) for name, path in %(damaged)r}
out["tables_after_damaged"] = len(connection.introspection.table_names())
out["files_after_damaged"] = files()
out["miscounted"] = refused(%(miscounted)r)
out["stored_after_miscounted"] = stored_data()
out["files_after_miscounted"] = files()
print(json.dumps(out))
"""


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.run(
        [sys.executable, *args], env=base | {"DJANGO_SETTINGS_MODULE": "config.settings"} | env,
        cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _fresh_database() -> tuple[str, str]:
    """A new, empty PostgreSQL database on the test server: (name, DATABASE_URL)."""
    name = f"keel_restore_{uuid.uuid4().hex[:12]}"
    url = database_url_for_worker()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name, url.rsplit("/", 1)[0] + f"/{name}"


def _drop_database(name: str) -> None:
    with psycopg.connect(database_url_for_worker(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _sample_suite() -> Suite:
    """The starter suite's first ten items: two domains, every trait; enough for a report
    card, and quick to score."""
    lines = (SUITES_DIR / "starter.jsonl").read_text(encoding="utf-8").splitlines()[:10]
    parsed = parse_jsonl("\n".join(lines), "starter.jsonl")
    return suite_store(name="bk-sample", parsed=parsed, description="starter, first ten",
                       source="keel", license=KEEL_LICENSE)  # fmt: skip


@pytest.fixture(scope="module")
def original(django_db_setup, django_db_blocker, tmp_path_factory, smollm2_tokenizer_dir):
    """Committed data for the module: a base in the registry folder (KEEL_MODELS_DIR of
    the data folder `data`) and a variant of it registered from another root (`external`),
    both evaluated; users with roles, an API token and an alias. Deleted at the end."""
    if connection.vendor != "postgresql":
        pytest.skip("restores into a fresh PostgreSQL database: set DATABASE_URL")
    root = tmp_path_factory.mktemp("backup")
    data_dir, external = root / "data", root / "external"
    base_dir = build_tiny_llama(data_dir / "models" / "bk-base", smollm2_tokenizer_dir, seed=31)
    variant_dir = build_tiny_llama(external / "bk-variant", smollm2_tokenizer_dir, seed=32)
    (data_dir / "models" / "notes").mkdir()
    (data_dir / "models" / "notes" / "where-these-came-from.txt").write_text("tiny, random\n")
    roots = [data_dir / "models", external]
    with django_db_blocker.unblock(), override_settings(KEEL_CHECKPOINT_ROOTS=roots):
        events_before = Event.objects.order_by("-id").values_list("id", flat=True).first() or 0
        suites_before = set(Suite.objects.values_list("pk", flat=True))
        users = {role: make_user(f"bk-{role}", role) for role in (VIEWER, OPERATOR, COMPLIANCE,
                                                                  ADMIN)}  # fmt: skip
        token = Token.objects.create(user=users[VIEWER])
        base = checkpoint_register(path=base_dir, name="bk-base", user=users[OPERATOR])
        variant = checkpoint_register(path=variant_dir, name="bk-variant", parent=base,
                                      user=users[OPERATOR])  # fmt: skip
        Alias.objects.create(name="bk-production", checkpoint=variant, set_by=users[OPERATOR])
        record(Action.ALIAS, variant, actor=users[OPERATOR], details={"alias": "bk-production"})
        suites = [_sample_suite()]
        for checkpoint in (base, variant):
            audit = audit_create(checkpoint=checkpoint, suites=suites, user=users[OPERATOR],
                                 samples=0, conditions=["neutral"], profile="quick")  # fmt: skip
            run_evaluation(audit.runs.get().pk)
        cards = {name: report_card_document(Checkpoint.objects.get(name=name)) for name in NAMES}
    yield SimpleNamespace(root=root, data_dir=data_dir, external=external, roots=roots,
                          token=token.key, cards=cards)  # fmt: skip
    with django_db_blocker.unblock():
        # The log is append-only through Keel; a test database is not an audit trail.
        Event.objects.filter(id__gt=events_before)._raw_delete(Event.objects.db)
        Audit.objects.filter(checkpoint__in=[base, variant]).delete()
        Alias.objects.filter(name="bk-production").delete()
        variant.delete()
        base.delete()
        for user in users.values():
            user.delete()
        Suite.objects.exclude(pk__in=suites_before).delete()


@pytest.fixture(scope="module")
def archive(original, django_db_blocker):
    """`manage.py backup --include-external` of the test database, then the variant's
    folder moved away, so that the restore has to write it back."""
    path = original.root / "keel.tar.gz"
    env = {"DATABASE_URL": database_url_for_worker(), "KEEL_DATA_DIR": str(original.data_dir),
           "KEEL_CHECKPOINT_ROOTS": ",".join(str(r) for r in original.roots)}  # fmt: skip
    done = _run(["manage.py", "backup", str(path), "--include-external"], env)
    assert done.returncode == 0, done.stderr
    with django_db_blocker.unblock():
        counts, verdict = row_counts(), verify()
    saved = original.root / "external-as-backed-up"
    shutil.move(original.external / "bk-variant", saved / "bk-variant")
    yield SimpleNamespace(path=path, output=done.stdout, counts=counts, verdict=verdict,
                          external_copy=saved)  # fmt: skip
    shutil.rmtree(original.external / "bk-variant", ignore_errors=True)
    shutil.move(saved / "bk-variant", original.external / "bk-variant")


@pytest.fixture(scope="module")
def restored(original, archive, models_root):
    """`manage.py restore` into a fresh database and data folder, then AFTER_RESTORE there.
    (The shared test-model root is allowed too, for checkpoints other modules left behind.)"""
    name, url = _fresh_database()
    data_dir = original.root / "restored-data"
    roots = f"{data_dir / 'models'},{original.external},{models_root}"
    env = {"DATABASE_URL": url, "KEEL_DATA_DIR": str(data_dir),
           "KEEL_CHECKPOINT_ROOTS": roots}  # fmt: skip
    try:
        done = _run(["manage.py", "restore", str(archive.path)], env)
        assert done.returncode == 0, done.stderr
        script = AFTER_RESTORE % {"names": NAMES, "password": PASSWORD, "token": original.token}
        checked = _run(["-c", script], env)
        assert checked.returncode == 0, checked.stderr
        yield SimpleNamespace(name=name, url=url, env=env, data_dir=data_dir, output=done.stdout,
                              **json.loads(checked.stdout.splitlines()[-1]))  # fmt: skip
    finally:
        _drop_database(name)


def test_the_archive_holds_a_manifest_of_every_member(original, archive):
    with tarfile.open(archive.path) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile(MANIFEST).read())
    assert names[0] == DATABASE and names[-1] == MANIFEST
    assert archive.path.stat().st_mode & 0o777 == 0o600  # password hashes, API tokens
    assert set(manifest["members"]) == set(names) - {MANIFEST}
    assert manifest["counts"] == archive.counts  # the rows as they stood at the backup
    assert manifest["counts"]["audits.score"] > 0 and manifest["counts"]["audits.itemresult"] > 0
    assert manifest["audit_log"]["head"] == archive.verdict.head
    assert ["audits", "0009_audit_log"] in manifest["migrations"]
    assert manifest["database"]["vendor"] == "postgresql"
    assert "models/bk-base/model.safetensors" in names
    assert "models/notes/where-these-came-from.txt" in names
    outside = f"external{original.external}/bk-variant/model.safetensors"
    assert outside in names
    stored = {c["name"]: (c["stored"], c["status"]) for c in manifest["checkpoints"]}
    assert stored["bk-base"] == ("models", "ok")
    assert stored["bk-variant"] == ("external, archived", "ok")
    assert f"Wrote {archive.path}" in archive.output and "intact" in archive.output


def test_report_cards_are_identical_after_a_restore(original, restored):
    # The variant lives outside the data folder and went back where it was: same hash.
    assert data_sha256(restored.cards["bk-variant"]) == data_sha256(original.cards["bk-variant"])
    # The base lived in the old data folder's models/ and moved to the new one; its card
    # differs in that path alone.
    moved = restored.cards["bk-base"]
    assert moved["checkpoint"]["path"] == str(restored.data_dir / "models" / "bk-base")
    moved["checkpoint"]["path"] = original.cards["bk-base"]["checkpoint"]["path"]
    assert data_sha256(moved) == data_sha256(original.cards["bk-base"])
    assert moved["cards"][0]["indices"] == original.cards["bk-base"]["cards"][0]["indices"]
    assert "1 moved to this KEEL_MODELS_DIR" in restored.output


def test_the_restored_audit_log_verifies_with_the_same_head(archive, restored):
    assert restored.log == [archive.verdict.events, archive.verdict.head, True]
    assert archive.verdict.events > 8  # roles, registrations, alias, queued audits
    assert restored.new["log"] == [archive.verdict.events + 2, True]  # queued, exported


def test_restored_files_are_byte_identical(original, archive, restored):
    assert _tree(restored.data_dir / "models") == _tree(original.data_dir / "models")
    assert _tree(original.external) == _tree(archive.external_copy)  # written back
    assert restored.fingerprints == {"bk-base": "ok", "bk-variant": "ok"}
    assert re.search(r"Checkpoints: (\d+) of \1 match their fingerprints", restored.output)


def test_people_sign_in_as_before_with_their_roles_and_token(restored):
    assert restored.signed_in
    assert restored.token_user == "bk-viewer"
    assert restored.roles == {f"bk-{r}": [r] for r in (VIEWER, OPERATOR, COMPLIANCE, ADMIN)}
    assert restored.alias == "bk-variant"


def test_new_rows_get_ids_after_the_restored_ones(restored):
    assert restored.new["user"] > restored.max_ids["user"]
    assert restored.new["audit"] > restored.max_ids["audit"]


def _rows(url: str) -> dict[str, int]:
    """Rows in every table of a database."""
    with psycopg.connect(url) as db:
        found = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {
            t: db.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(
                psycopg.sql.Identifier(t))).fetchone()[0]
            for (t,) in found.fetchall()
        }  # fmt: skip


def test_restore_refuses_a_database_that_holds_data(archive, restored):
    rows, files = _rows(restored.url), _tree(restored.data_dir)
    done = _run(["manage.py", "restore", str(archive.path)], restored.env)
    assert done.returncode == 2
    assert "already holds Keel data" in done.stderr and "createdb" in done.stderr
    assert _rows(restored.url) == rows and _tree(restored.data_dir) == files
    assert rows["audits_event"] == restored.new["log"][0]


def _repack(source: Path, target: Path, change) -> Path:
    """A copy of the archive with `change(name, data) -> data` applied to every member."""
    with tarfile.open(source) as old, tarfile.open(target, "w:gz", compresslevel=1) as new:
        for member in old.getmembers():
            data = change(member.name, old.extractfile(member).read())
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))
    return target


def test_damaged_archives_are_refused_before_anything_is_written(
    original, archive, restored, models_root
):
    folder = original.root / "bad"
    folder.mkdir()
    weights = "models/bk-base/model.safetensors"

    def flip(name, data):
        return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:] if name == weights else data

    def miscount(name, data):
        if name != MANIFEST:
            return data
        manifest = json.loads(data)
        manifest["counts"]["audits.score"] += 1
        return json.dumps(manifest).encode()

    raw = archive.path.read_bytes()
    flipped = folder / "flipped.tar.gz"
    flipped.write_bytes(raw[: len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 0xFF])
                        + raw[len(raw) // 2 + 1 :])  # fmt: skip
    truncated = folder / "truncated.tar.gz"
    truncated.write_bytes(raw[: len(raw) * 2 // 3])
    damaged = [("altered", str(_repack(archive.path, folder / "altered.tar.gz", flip))),
               ("flipped", str(flipped)), ("truncated", str(truncated))]  # fmt: skip
    miscounted = str(_repack(archive.path, folder / "miscounted.tar.gz", miscount))
    name, url = _fresh_database()
    roots = f"{folder / 'data' / 'models'},{original.external},{models_root}"
    env = {"DATABASE_URL": url, "KEEL_DATA_DIR": str(folder / "data"),
           "KEEL_CHECKPOINT_ROOTS": roots}  # fmt: skip
    try:
        done = _run(["-c", BAD_ARCHIVES % {"damaged": damaged, "miscounted": miscounted}], env)
    finally:
        _drop_database(name)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["altered"][0] == 2 and "SHA-256 does not match" in out["altered"][1]
    assert weights in out["altered"][1]
    # A flipped byte fails decompression, or changes a member whose hash then differs.
    for case in ("flipped", "truncated"):
        assert out[case][0] == 2 and "Nothing was restored" in out[case][1], out[case]
    assert "damaged or incomplete" in out["truncated"][1]
    assert out["tables_after_damaged"] == 0 and out["files_after_damaged"] == []
    assert out["miscounted"][0] == 1 and "row counts differ" in out["miscounted"][1]
    assert (
        "audits.score" in out["miscounted"][1] and "Nothing was committed" in out["miscounted"][1]
    )
    assert out["stored_after_miscounted"] == {} and out["files_after_miscounted"] == []


def test_an_archive_from_before_a_migration_loads_and_is_migrated_forward(
    original, archive, restored, models_root
):
    """As if made by the Keel before aliases existed: restore migrates a new database to
    the archive's state, loads and verifies it there, then applies the newer migration."""
    aliases = b'"model": "models_registry.alias"'

    def before_aliases(name, data):
        if name == DATABASE:
            kept = [line for line in gzip.decompress(data).splitlines(True) if aliases not in line]
            return gzip.compress(b"".join(kept))
        return data

    older = _repack(archive.path, original.root / "older.tar.gz", before_aliases)
    with tarfile.open(older) as tar:
        dump = tar.extractfile(DATABASE).read()
    rewrite = original.root / "older-manifest.tar.gz"

    def manifest_before_aliases(name, data):
        if name != MANIFEST:
            return data
        manifest = json.loads(data)
        manifest["migrations"].remove(["models_registry", "0004_aliases"])
        manifest["counts"]["models_registry.alias"] = 0
        manifest["members"][DATABASE] = {"sha256": hashlib.sha256(dump).hexdigest(),
                                         "size": len(dump)}  # fmt: skip
        return json.dumps(manifest).encode()

    _repack(older, rewrite, manifest_before_aliases)
    name, url = _fresh_database()
    roots = f"{original.root / 'older-data' / 'models'},{original.external},{models_root}"
    env = {"DATABASE_URL": url, "KEEL_DATA_DIR": str(original.root / "older-data"),
           "KEEL_CHECKPOINT_ROOTS": roots}  # fmt: skip
    try:
        done = _run(["manage.py", "restore", str(rewrite)], env)
        rows = _rows(url)
    finally:
        _drop_database(name)
    assert done.returncode == 0, done.stderr
    assert "Then applied 1 newer migration(s)." in done.stdout
    assert rows["models_registry_alias"] == 0
    assert rows["audits_event"] == archive.verdict.events
    assert rows["models_registry_checkpoint"] == archive.counts["models_registry.checkpoint"]


def test_backup_refuses_an_existing_file_and_a_missing_folder(tmp_path):
    existing = tmp_path / "keel.tar.gz"
    existing.write_bytes(b"an earlier backup")
    with pytest.raises(CommandError, match="already exists.*--force") as raised:
        call_command("backup", str(existing))
    assert raised.value.returncode == 2 and existing.read_bytes() == b"an earlier backup"
    with pytest.raises(CommandError, match="folder .*missing.* does not exist") as raised:
        call_command("backup", str(tmp_path / "missing" / "keel.tar.gz"))
    assert raised.value.returncode == 2 and not (tmp_path / "missing").exists()
    with pytest.raises(CommandError, match="does not exist or is not a file") as raised:
        call_command("restore", str(tmp_path / "nothing.tar.gz"))
    assert raised.value.returncode == 2


def test_force_replaces_an_existing_archive(db, tmp_path, settings):
    settings.KEEL_MODELS_DIR = tmp_path / "models"
    existing = tmp_path / "keel.tar.gz"
    existing.write_bytes(b"an earlier backup")
    out = io.StringIO()
    call_command("backup", str(existing), "--force", stdout=out)
    with tarfile.open(existing) as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())
    assert manifest["counts"] == row_counts()
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".keel-backup-*"))
    assert f"Wrote {existing}" in out.getvalue()
