"""The audit log from the command line: `auditlog verify` checks the hash chain."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audits.trail import verify


class Command(BaseCommand):
    help = "Audit log: verify (walk the hash chain, report the first broken link)"

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        check = sub.add_parser("verify", help="check that no event was altered or deleted")
        check.add_argument(
            "--head", metavar="HASH",
            help="a head hash recorded earlier (printed by a previous verify): fails if that "
            "event is no longer in the chain, which catches events cut off the end",
        )  # fmt: skip

    def handle(self, *args, action: str, head: str | None = None, **options):
        verdict = verify()
        if not verdict.intact:
            raise CommandError(
                f"Audit log broken after {verdict.events} intact event(s): {verdict.problem}.",
                returncode=1,
            )
        if head:
            from audits.models import Event

            if head != verdict.head and not Event.objects.filter(hash=head).exists():
                raise CommandError(
                    f"The recorded head {head[:16]}… is no longer in the chain: events at the "
                    "end of the log were deleted.", returncode=1,
                )  # fmt: skip
        self.stdout.write(
            f"Audit log intact: {verdict.events} event(s); head {verdict.head}\n"
            "Keep the head hash somewhere else; `auditlog verify --head HASH` later also "
            "catches events deleted from the end."
        )
