from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audits.builtin import reserved_suite_names
from audits.models import Suite
from audits.suite_export import FORMATS, export_jsonl, export_lm_eval, export_trl
from audits.suite_io import SuiteError, check_size, parse_file, suite_store
from audits.suite_stats import suite_stats
from models_registry.models import Checkpoint


def fail(message: str) -> CommandError:
    return CommandError(message, returncode=2)


class Command(BaseCommand):
    help = "Suites: list, validate FILE, import FILE, export NAME --format ..., stats NAME."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="every suite, newest version first")
        validate = sub.add_parser("validate", help="check a .jsonl or .csv file; store nothing")
        validate.add_argument("file")
        imp = sub.add_parser("import", help="validate and store a .jsonl or .csv file")
        imp.add_argument("file")
        imp.add_argument("--name", help="suite name (default: the file's name)")
        imp.add_argument("--description", default="")
        imp.add_argument("--source", default="user import")
        imp.add_argument("--license", default="unspecified")
        export = sub.add_parser("export", help="write a suite out")
        export.add_argument("name")
        export.add_argument("--format", choices=FORMATS, required=True)
        export.add_argument("--out", required=True, help="a file (jsonl, trl) or folder (lm-eval)")
        export.add_argument("--split", choices=["train", "eval"])
        export.add_argument("--version", type=int, help="default: the newest")
        export.add_argument("--checkpoint", help="lm-eval: render with this checkpoint's template")
        stats = sub.add_parser("stats", help="counts, balance and length bias")
        stats.add_argument("name")
        stats.add_argument("--version", type=int)
        stats.add_argument("--json", action="store_true", dest="as_json")

    def handle(self, *args, action: str, **options):
        getattr(self, f"do_{action}")(**options)

    def do_list(self, **options):
        rows = Suite.objects.order_by("name", "-version")
        if not rows:
            self.stdout.write("No suites; `python manage.py keel_setup` loads the built-in ones.")
        for s in rows:
            self.stdout.write(
                f"{s.name:24} v{s.version:<3} {s.items.count():5} items  {s.content_hash[:12]}  "
                f"{s.license:12} {s.source}"
            )

    def do_validate(self, *, file: str, **options):
        parsed = self._parse(file)
        self.stdout.write(f"{file}: {len(parsed.items)} valid items, sha256 {parsed.content_hash}")

    def do_import(self, *, file: str, name: str | None, description: str, source: str,
                  license: str, **options):  # fmt: skip
        from django.utils.text import slugify

        name = name or slugify(Path(file).stem)
        if not name or slugify(name) != name:
            raise fail(f"Suite name {name!r} is not allowed: use lower-case letters, digits, -.")
        if name in reserved_suite_names():
            raise fail(f"{name!r} is a built-in suite's name; choose another with --name.")
        parsed = self._parse(file)
        before = Suite.objects.filter(name=name, content_hash=parsed.content_hash).first()
        suite = suite_store(name=name, parsed=parsed, description=description, source=source,
                            license=license)  # fmt: skip
        verb = "Already stored as" if before else "Imported"
        self.stdout.write(f"{verb} {suite}: {len(parsed.items)} items, {suite.content_hash[:12]}")

    def do_export(self, *, name: str, format: str, out: str, split: str | None,
                  version: int | None, checkpoint: str | None, **options):  # fmt: skip
        suite = self._suite(name, version)
        target = Path(out)
        if format == "lm-eval":
            tokenizer = self._tokenizer(checkpoint)
            yaml = export_lm_eval(suite, target, tokenizer=tokenizer, split=split or "eval")
            command = f"lm_eval --model hf --include_path {target} --tasks {yaml.stem} --device cpu"
            self.stdout.write(f"Wrote {yaml} and its data; run: {command}")
            return
        if not target.parent.is_dir():
            raise fail(f"{target.parent} is not a folder; create it or choose another --out.")
        count = (export_jsonl if format == "jsonl" else export_trl)(suite, target, split)
        self.stdout.write(f"Wrote {count} items of {suite} to {target}")

    def do_stats(self, *, name: str, version: int | None, as_json: bool, **options):
        stats = suite_stats(self._suite(name, version))
        if as_json:
            self.stdout.write(json.dumps(stats, indent=2))
            return
        for key, value in stats.items():
            self.stdout.write(f"{key:24} {value}")

    def _parse(self, file: str):
        path = Path(file)
        if not path.is_file():
            raise fail(f"{file} is not a file.")
        try:
            check_size(path.stat().st_size, path.name)  # before reading it into memory
            return parse_file(path.read_bytes(), path.name)
        except SuiteError as exc:
            raise fail(str(exc)) from None

    def _suite(self, name: str, version: int | None) -> Suite:
        suites = Suite.objects.filter(name=name).order_by("-version")
        suite = suites.filter(version=version).first() if version else suites.first()
        if suite is None:
            known = ", ".join(sorted(set(Suite.objects.values_list("name", flat=True))))
            what = f"{name!r} v{version}" if version else repr(name)
            raise fail(f"No suite {what} (known: {known or 'none'}).")
        return suite

    def _tokenizer(self, checkpoint: str | None):
        if checkpoint is None:
            return None
        found = Checkpoint.objects.filter(name=checkpoint).first()
        if found is None:
            raise fail(f"No checkpoint named {checkpoint!r}.")
        from gpu_tasks.engine.loading import load_tokenizer

        return load_tokenizer(found.path)
