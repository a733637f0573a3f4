"""The item format of DESIGN.md: validation, loading from .jsonl, content hashes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from audits.models import DOMAINS, FAMILIES, TRAITS, Item, Suite

BUILTIN_DIR = Path(__file__).resolve().parent / "suites"
BUILTIN_SUITES = {
    # name: (file, description, source, licence)
    "starter": (
        "starter.jsonl",
        "Starter beneficial-conversations suite: one held-out item per domain and trait.",
        "keel",
        "Apache-2.0",
    ),
}
ROLES = {"system", "user", "assistant"}


class SuiteError(ValueError):
    """A suite file with problems; ``problems`` lists each with its line number."""

    def __init__(self, path: str, problems: list[str]):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{path}: {len(problems)} problem(s); nothing was stored.\n{shown}{more}")


@dataclass(frozen=True)
class ParsedSuite:
    items: list[dict]
    content_hash: str


def validate_item(item: object) -> list[str]:
    """Everything wrong with one item, as short sentences."""
    if not isinstance(item, dict):
        return ["each line must be a JSON object"]
    problems = []
    for key in ("id", "split", "domain", "kind", "messages"):
        if key not in item:
            problems.append(f"missing {key!r}")
    if problems:
        return problems
    if not isinstance(item["id"], str) or not item["id"].strip():
        problems.append("'id' must be a non-empty string")
    if item["split"] not in ("train", "eval"):
        problems.append(f"'split' must be 'train' or 'eval', not {item['split']!r}")
    if item["domain"] not in DOMAINS:
        problems.append(f"unknown domain {item['domain']!r} (known: {', '.join(DOMAINS)})")
    if item["kind"] == "benefit":
        if item.get("trait") not in TRAITS:
            problems.append(f"benefit items need a trait from {', '.join(TRAITS)}")
    elif item["kind"] == "misalignment":
        if item.get("family") not in FAMILIES:
            problems.append(f"misalignment items need a family from {', '.join(FAMILIES)}")
    else:
        problems.append(f"'kind' must be 'benefit' or 'misalignment', not {item['kind']!r}")
    problems += _message_problems(item["messages"])
    for reply in ("chosen", "rejected"):
        value = item.get(reply)
        if item["split"] == "eval" and not (isinstance(value, str) and value.strip()):
            problems.append(f"eval items need a non-empty {reply!r} reply")
        elif value is not None and not isinstance(value, str):
            problems.append(f"{reply!r} must be a string")
    rubric = item.get("rubric", [])
    if not isinstance(rubric, list) or not all(
        isinstance(r, dict) and isinstance(r.get("criterion"), str)
        and isinstance(r.get("weight"), int | float) and not isinstance(r.get("weight"), bool)
        for r in rubric
    ):  # fmt: skip
        problems.append("'rubric' must be a list of {criterion: text, weight: number}")
    if not isinstance(item.get("tags", []), list):
        problems.append("'tags' must be a list")
    return problems


def _message_problems(messages: object) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ["'messages' must be a non-empty list of {role, content}"]
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and message.get("role") in ROLES
                and isinstance(message.get("content"), str)):  # fmt: skip
            return [f"messages[{i}] must be {{role: system|user|assistant, content: text}}"]
    if messages[-1]["role"] != "user":
        return ["the last message must be the user's turn the replies answer"]
    return []


def parse_jsonl(text: str, source_name: str) -> ParsedSuite:
    items: list[dict] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        item_problems = validate_item(item)
        problems += [f"line {number}: {p}" for p in item_problems]
        if not item_problems:
            if item["id"] in seen:
                problems.append(f"line {number}: id {item['id']!r} repeats line {seen[item['id']]}")
            seen[item["id"]] = number
            items.append(item)
    if not items and not problems:
        problems.append("the file holds no items")
    if problems:
        raise SuiteError(source_name, problems)
    return ParsedSuite(items=items, content_hash=content_hash(items))


def content_hash(items: list[dict]) -> str:
    """sha256 of the canonical JSON of the items, in id order: any change changes it."""
    canonical = json.dumps(
        sorted(items, key=lambda i: i["id"]), sort_keys=True, separators=(",", ":"),
        ensure_ascii=False,
    )  # fmt: skip
    return hashlib.sha256(canonical.encode()).hexdigest()


@transaction.atomic
def suite_store(*, name: str, parsed: ParsedSuite, description: str, source: str,
                license: str) -> Suite:  # fmt: skip
    """Store a suite version; an unchanged suite returns the version already stored."""
    existing = Suite.objects.filter(name=name, content_hash=parsed.content_hash).first()
    if existing is not None:
        return existing
    latest = Suite.objects.filter(name=name).order_by("-version").first()
    suite = Suite.objects.create(
        name=name,
        version=(latest.version + 1) if latest else 1,
        content_hash=parsed.content_hash,
        description=description,
        source=source,
        license=license,
    )
    Item.objects.bulk_create(
        Item(
            suite=suite,
            item_id=i["id"],
            split=i["split"],
            domain=i["domain"],
            trait=i.get("trait") or "",
            family=i.get("family") or "",
            kind=i["kind"],
            messages=i["messages"],
            chosen=i.get("chosen") or "",
            rejected=i.get("rejected") or "",
            rubric=i.get("rubric", []),
            tags=i.get("tags", []),
        )
        for i in parsed.items
    )
    return suite


def load_builtin_suites() -> list[Suite]:
    suites = []
    for name, (filename, description, source, licence) in BUILTIN_SUITES.items():
        path = BUILTIN_DIR / filename
        parsed = parse_jsonl(path.read_text(encoding="utf-8"), str(path))
        suites.append(
            suite_store(
                name=name, parsed=parsed, description=description, source=source, license=licence
            )  # fmt: skip
        )
    return suites
