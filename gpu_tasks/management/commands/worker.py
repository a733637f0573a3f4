"""Start a Celery worker sized to the devices it declares."""

from __future__ import annotations

import os
import shutil
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gpu_tasks.reaper import QUEUES
from gpu_tasks.slots import parse_devices


class Command(BaseCommand):
    help = (
        "Start a worker on this host: one job process per device slot (devices from "
        "--devices or KEEL_WORKER_DEVICES, each taken by --jobs-per-device jobs at most)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--queues", default=",".join(QUEUES.values()),
            help="comma-separated: evaluate, train or both (default: both)",
        )  # fmt: skip
        parser.add_argument(
            "--devices", default=",".join(settings.KEEL_WORKER_DEVICES),
            help="comma-separated devices, e.g. cuda:0,cuda:1 or cpu (default: "
            "KEEL_WORKER_DEVICES; empty: one job on the best device found)",
        )  # fmt: skip
        parser.add_argument(
            "--jobs-per-device", type=int, default=settings.KEEL_JOBS_PER_DEVICE,
            help="jobs that may share one device (default: KEEL_JOBS_PER_DEVICE, 1)",
        )  # fmt: skip
        parser.add_argument(
            "--name", default="keel",
            help="the node's name before @host (default keel); give each worker on one host "
            "its own",
        )  # fmt: skip
        parser.add_argument("--loglevel", default="INFO")
        parser.add_argument(
            "--beat", action="store_true",
            help="also run the beat scheduler in this process (on one host only)",
        )  # fmt: skip

    def handle(self, *args, **options):
        queues = [q.strip() for q in options["queues"].split(",") if q.strip()]
        unknown = sorted(set(queues) - set(QUEUES.values()))
        if not queues or unknown:
            raise CommandError(
                f"--queues {options['queues']!r}: use evaluate, train or evaluate,train",
                returncode=2,
            )
        names = [d.strip() for d in options["devices"].split(",") if d.strip()]
        try:
            parse_devices(names)
        except ValueError as exc:
            raise CommandError(f"--devices: {exc}", returncode=2) from None
        if not options["name"].replace("-", "").replace("_", "").isalnum():
            raise CommandError(f"--name {options['name']!r}: letters, digits, - and _ only",
                               returncode=2)  # fmt: skip
        jobs = options["jobs_per_device"]
        if not 1 <= jobs <= 64:
            raise CommandError(f"--jobs-per-device {jobs}: use 1 to 64", returncode=2)
        # The job processes read their slots from the environment (gpu_tasks/slots.py).
        os.environ["KEEL_WORKER_DEVICES"] = ",".join(names)
        os.environ["KEEL_JOBS_PER_DEVICE"] = str(jobs)
        concurrency = max(len(names), 1) * jobs
        celery = shutil.which("celery", path=os.path.dirname(sys.executable)) or "celery"
        argv = [celery, "-A", "config", "worker", "--queues", ",".join(queues),
                "--concurrency", str(concurrency), "--hostname", f"{options['name']}@%h",
                "--loglevel", options["loglevel"], "--events"]  # fmt: skip
        if options["beat"]:
            argv += ["--beat", "--schedule", str(settings.KEEL_DATA_DIR / "celerybeat-schedule")]
        self.stdout.write(f"worker: queues {','.join(queues)}, devices {names or ['auto']}, "
                          f"{concurrency} job process(es)")  # fmt: skip
        self.stdout.flush()
        os.execv(celery, argv)  # noqa: S606  (the worker replaces this process)
