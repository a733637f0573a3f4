"""`audit run` refuses bad arguments with a message that says what to do, storing nothing."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audits.models import Audit


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--checkpoint", "nope"],
            "No checkpoint named 'nope' (registered: tiny-llama)",
        ),
        (["--judge", "nope"], "No judge checkpoint named 'nope'"),
        (["--reward-model", "nope"], "No reward model named 'nope'"),
        (["--samples", "99"], "--samples must be 0 to 16"),
        (["--suite", "nope"], "Unknown suite(s) nope (known: starter)"),
        (["--condition", "bogus"], "invalid choice: 'bogus'"),
        (["--profile", "huge"], "invalid choice: 'huge'"),
    ],
)
def test_bad_arguments_are_refused_and_nothing_is_queued(tiny_checkpoint, starter_suite, args,
                                                         message):  # fmt: skip
    base = ["audit", "run", "--checkpoint", "tiny-llama", "--judge", "none", "--suite", "starter"]
    with pytest.raises(CommandError) as refused:
        call_command(*base, *args)
    assert message in str(refused.value)
    assert not Audit.objects.exists()
