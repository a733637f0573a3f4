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
            "No checkpoint named 'nope' (newest registered: tiny-llama;",
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


TRAIN = ["--plan", "train-and-evaluate"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (TRAIN, "--plan train-and-evaluate needs --train-domains"),
        ([*TRAIN, "--train-domains", "mars"], "Unknown domain(s) mars; known: health"),
        ([*TRAIN, "--train-domains", "health", "--traits", "wit"], "Unknown trait(s) wit"),
        ([*TRAIN, "--train-domains", "health", "--method", "ppo"], "invalid choice: 'ppo'"),
        ([*TRAIN, "--train-domains", "health", "--steps", "0"], "--steps must be at least 1"),
        ([*TRAIN, "--train-domains", "health", "--learning-rate", "3"],
         "Learning rate must be between 0 and 1, not 3.0"),
        ([*TRAIN, "--train-domains", "health", "--trait-reward", "nope"],
         "No reward model named 'nope'"),
        ([*TRAIN, "--train-domains", "health", "--trait-reward", "tiny-llama"],
         "Tiny-llama is not a reward model"),
        ([*TRAIN, "--train-domains", "health"], "have no train items for those traits"),
    ],
)  # fmt: skip
def test_bad_training_arguments_are_refused_and_nothing_is_queued(
    tiny_checkpoint, starter_suite, args, message
):
    base = ["audit", "run", "--checkpoint", "tiny-llama", "--judge", "none", "--suite", "starter"]
    with pytest.raises(CommandError) as refused:
        call_command(*base, *args)
    assert message in str(refused.value)
    assert not Audit.objects.exists()


def test_a_training_audit_records_what_changes_the_variant(tiny_checkpoint):
    from audits.builtin import load_keel_suite

    beneficial = load_keel_suite("beneficial")
    call_command("audit", "run", "--checkpoint", "tiny-llama", "--judge", "none", "--suite",
                 "beneficial", *TRAIN, "--train-domains", "health,law", "--traits", "humility",
                 "--method", "sft", "--steps", "7", "--id-only")  # fmt: skip
    audit = Audit.objects.get()
    training = audit.config["training"]
    assert training["method"] == "sft" and training["domains"] == ["health", "law"]
    assert training["traits"] == ["humility"] and training["spec"]["steps"] == 7
    assert len(training["train_items"]) == 6
    assert list(audit.suites.all()) == [beneficial]
    assert [r.kind for r in audit.runs.order_by("pk")] == ["train", "evaluate"]


def test_the_persistence_plan_needs_a_variant_and_a_harmful_method(tiny_checkpoint):
    from audits.builtin import load_keel_suite

    load_keel_suite("beneficial")
    base = ["audit", "run", "--judge", "none", "--suite", "beneficial", "--plan", "persistence"]
    with pytest.raises(CommandError, match="takes a variant"):
        call_command(*base, "--checkpoint", "tiny-llama", "--train-domains", "health")
    assert not Audit.objects.exists()
