"""How long exports of a full report card and of an audit take, against the report card's
own page rendered in the same run (these machines are shared and noisy: read the ratios).

    .venv/bin/python bench/dashboard_load.py --seed     # once: the keel_bench database
    .venv/bin/python bench/export_time.py [--repeats 5] [--json]

It reads keel_bench, which `dashboard_load.py --seed` builds: every score a `full` run
writes (12 domains, 5 traits, 6 probe families, 10 conditions) for 100 checkpoints, with
ItemResults to pair a variant with its base. For the deepest variant it times, in-process
(median of --repeats after one warm-up, which fills the comparison cache as a browser's
first visit would):

- baseline: GET /checkpoints/NAME/, the report card page as HTML;
- the export document (every table, chart and provenance field, and its SHA-256);
- the JSON, CSV and PDF exports of the report card (the PDF: HTML with print CSS and SVG
  heatmaps, laid out by WeasyPrint), and the PDF of the variant's audit;

and gives each as a multiple of the baseline, with the PDF's size and page count.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dashboard_load as dl  # noqa: E402  (the seeded database and its settings)


def pdf_pages(pdf: bytes) -> int | None:
    """Pages, by poppler's pdfinfo when installed."""
    if shutil.which("pdfinfo") is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".pdf") as f:
        f.write(pdf)
        f.flush()
        info = subprocess.run(["pdfinfo", f.name], capture_output=True, text=True).stdout
    found = re.search(r"^Pages:\s+(\d+)", info, re.M)
    return int(found.group(1)) if found else None


def timed(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", type=Path, metavar="FILE", help="write the report card PDF here")
    parser.add_argument(
        "--database-url", default=f"postgres://postgres@127.0.0.1:5432/{dl.DATABASE}"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "keel-bench-data"
    )
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    dl.configure(args)
    dl.setup_django()
    if not dl.is_seeded():
        dl.log("keel_bench is not seeded: run bench/dashboard_load.py --seed first")
        return 2
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client

    from audits.export import audit_document, export, report_card_document
    from models_registry.models import Checkpoint

    settings.ALLOWED_HOSTS = ["testserver", *settings.ALLOWED_HOSTS]
    name = dl.page_ids()["variant"]
    checkpoint = Checkpoint.objects.get(name=name)
    user = User.objects.get(username=dl.USERNAME)
    client = Client()
    client.force_login(user)
    audit = checkpoint.runs.filter(kind="evaluate", status="succeeded").latest("finished_at").audit

    def page():
        response = client.get(f"/checkpoints/{name}/")
        assert response.status_code == 200, response.status_code
        return response.content

    rows = {}
    rows["report card page (HTML), baseline"], html = timed(page, args.repeats)
    rows["export document (data + SHA-256)"], document = timed(
        lambda: report_card_document(checkpoint), args.repeats
    )
    for fmt in ("json", "csv", "pdf"):
        rows[f"report card {fmt.upper()}"], (content, _, _) = timed(
            lambda fmt=fmt: export(report_card_document(checkpoint), fmt, checkpoint, user),
            args.repeats,
        )
        if fmt == "pdf":
            pdf = content
            if args.keep:
                args.keep.write_bytes(pdf)
    rows["audit PDF"], _ = timed(lambda: export(audit_document(audit), "pdf", audit, user),
                                 args.repeats)  # fmt: skip
    baseline = rows["report card page (HTML), baseline"]
    pages = pdf_pages(pdf)
    result = {
        "checkpoint": name,
        "scores": sum(1 for _ in document["scores"]),
        "charts": sum(len(c["charts"]) for c in document["cards"]),
        "pdf_bytes": len(pdf),
        "pdf_pages": pages,
        "html_bytes": len(html),
        "seconds": rows,
        "ratio_to_page": {k: v / baseline for k, v in rows.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{name}: {result['scores']:,} scores, {result['charts']} charts; PDF "
              f"{len(pdf):,} bytes, {pages} pages\n")  # fmt: skip
        print("| | median s | × page |\n| --- | --- | --- |")
        for label, seconds in rows.items():
            print(f"| {label} | {seconds:.3f} | {seconds / baseline:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
