"""The item format of DESIGN.md: validation, parsing (JSONL and CSV), hashes, storage.

Every problem in a file is reported with its line number, and a file with any
problem stores nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from audits.conditions import HELPFUL, condition_of
from audits.models import DOMAINS, FAMILIES, TRAITS, Item, Suite
from audits.trail import Action, record

GENERAL = "general"  # third-party sets that belong to no single domain
ROLES = {"system", "user", "assistant"}
KINDS = ("benefit", "misalignment", "instruction")
KEYS = ("id", "split", "domain", "trait", "family", "kind", "messages", "chosen", "rejected",
        "rubric", "tags", "source", "license")  # fmt: skip
CSV_REQUIRED = ("id", "split", "domain", "kind", "chosen", "rejected")
SURROGATE = re.compile("[\ud800-\udfff]")


class SuiteError(ValueError):
    """A suite file with problems; ``problems`` lists each with its line number."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(
            f"{source}: {len(problems)} problem(s); nothing was stored.\n{shown}{more}"
        )


@dataclass(frozen=True)
class ParsedSuite:
    items: list[dict]
    content_hash: str


def validate_item(item: object) -> list[str]:
    """Everything wrong with one item, as short sentences."""
    if not isinstance(item, dict):
        return ["each line must be a JSON object"]
    problems = [f"missing {key!r}" for key in ("id", "split", "domain", "kind", "messages")
                if key not in item]  # fmt: skip
    if problems:
        return problems
    unknown = sorted(set(item) - set(KEYS))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(map(repr, unknown))}")
    if not isinstance(item["id"], str) or not item["id"].strip() or len(item["id"]) > 200:
        problems.append("'id' must be a non-empty string of at most 200 characters")
    if item["split"] not in ("train", "eval"):
        problems.append(f"'split' must be 'train' or 'eval', not {item['split']!r}")
    if item["domain"] not in (*DOMAINS, GENERAL):
        problems.append(
            f"unknown domain {item['domain']!r} (use one of {', '.join(DOMAINS)}, or {GENERAL})"
        )
    problems += _kind_problems(item)
    for key, allowed, kind in (("trait", TRAITS, "benefit"), ("family", FAMILIES, "misalignment")):
        if item["kind"] != kind and item.get(key) not in (None, "", *allowed):
            problems.append(f"{key!r} must be one of {', '.join(allowed)}, or left out")
    for key, longest in (("source", 200), ("license", 100)):
        value = item.get(key)
        if value is not None and not (isinstance(value, str) and len(value) <= longest):
            problems.append(f"{key!r} must be text of at most {longest} characters")
    problems += _text_problems(item)
    problems += _message_problems(item["messages"])
    for reply in ("chosen", "rejected"):
        value = item.get(reply)
        if item["split"] == "eval" and not (isinstance(value, str) and value.strip()):
            problems.append(f"eval items need a non-empty {reply!r} reply")
        elif value is not None and not isinstance(value, str):
            problems.append(f"{reply!r} must be a string")
    if item.get("chosen") and item.get("chosen") == item.get("rejected"):
        problems.append("'chosen' and 'rejected' are the same text")
    rubric = item.get("rubric") or []
    if not isinstance(rubric, list) or not all(
        isinstance(r, dict) and isinstance(r.get("criterion"), str)
        and isinstance(r.get("weight"), int | float) and not isinstance(r.get("weight"), bool)
        for r in rubric
    ):  # fmt: skip
        problems.append("'rubric' must be a list of {criterion: text, weight: number}")
    tags = item.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        problems.append("'tags' must be a list of strings")
    return problems


def _text_problems(value: object) -> list[str]:
    """Characters no database column can hold: NUL, and halves of a surrogate pair (JSON's
    \\ud800 escapes, which are not Unicode text on their own)."""
    found = set()
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack += [*value.keys(), *value.values()]
        elif isinstance(value, list):
            stack += value
        elif isinstance(value, str):
            if "\x00" in value:
                found.add("a NUL character (\\u0000); remove it")
            if SURROGATE.search(value):
                found.add(
                    "an unpaired surrogate (\\ud800-\\udfff), which is not Unicode text; "
                    "save the file as UTF-8 from the original text"
                )
    return [f"the text holds {what}" for what in sorted(found)]


def _kind_problems(item: dict) -> list[str]:
    kind = item["kind"]
    if kind == "benefit" and item.get("trait") not in TRAITS:
        return [f"benefit items need a trait from {', '.join(TRAITS)}"]
    if kind == "misalignment" and item.get("family") not in FAMILIES:
        return [f"misalignment items need a family from {', '.join(FAMILIES)}"]
    if kind == "instruction":
        name = condition_of(item.get("tags")) if isinstance(item.get("tags"), list) else None
        if name not in HELPFUL:
            known = ", ".join(HELPFUL)
            return [f"instruction items need a tag condition:NAME, NAME one of {known}"]
    if kind not in KINDS:
        return [f"'kind' must be one of {', '.join(KINDS)}, not {kind!r}"]
    return []


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


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is too large")
    return value


def _whole_number(text: str) -> int:
    if len(text.lstrip("-")) > 30:
        raise ValueError(f"the number {text[:20]}... has more than 30 digits")
    return int(text)


def _not_a_number(text: str) -> None:
    raise ValueError(f"{text} is not a JSON number; write a number or null")


def read_json(text: str) -> object:
    """json.loads, refusing what no database column can hold (NaN, Infinity, numbers past
    a float's range) and nesting too deep to read, each with a ValueError that says so."""
    try:
        return json.loads(text, parse_float=_number, parse_int=_whole_number,
                          parse_constant=_not_a_number)  # fmt: skip
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise ValueError("nested too deeply to read") from None


def parse_jsonl(text: str, source_name: str) -> ParsedSuite:
    rows: list[tuple[int, object]] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, read_json(line)))
        except ValueError as exc:
            problems.append(f"line {number}: not valid JSON ({exc})")
    return _check(rows, problems, source_name)


def parse_csv(text: str, source_name: str) -> ParsedSuite:
    """CSV with columns id, split, domain, trait, family, kind, chosen, rejected, and either
    `messages` (JSON list) or `prompt` (one user turn); optional `rubric` (JSON list) and
    `tags` (separated by ';')."""
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise SuiteError(source_name, [f"line 1: {_csv_problem(exc)}"]) from None
    missing = [c for c in CSV_REQUIRED if c not in header]
    if "messages" not in header and "prompt" not in header:
        missing.append("messages or prompt")
    if missing:
        raise SuiteError(source_name, [f"line 1: the header lacks column(s) {', '.join(missing)}"])
    rows: list[tuple[int, object]] = []
    problems: list[str] = []
    last_line = reader.line_num  # the header's; a quoted field may span several lines
    try:
        for row in reader:
            line_no, last_line = last_line + 1, reader.line_num
            try:
                rows.append((line_no, _item_from_csv(row)))
            except ValueError as exc:
                problems.append(f"line {line_no}: {exc}")
    except csv.Error as exc:
        where = last_line + 1  # the row that could not be read starts there
        raise SuiteError(source_name, [f"line {where}: {_csv_problem(exc)}"]) from None
    return _check(rows, problems, source_name)


def _csv_problem(exc: csv.Error) -> str:
    if "field larger than field limit" in str(exc):
        return (
            f"a field is longer than {csv.field_size_limit():,} characters; shorten it, or "
            "use JSON lines for long conversations"
        )
    return f"not valid CSV ({exc}); check the quoting"


def _item_from_csv(row: dict) -> dict:
    if None in row:
        raise ValueError("more fields than the header has columns")
    item: dict = {k: (row.get(k) or None) for k in ("id", "split", "domain", "trait", "family",
                                                     "kind", "chosen", "rejected")}  # fmt: skip
    if row.get("messages"):
        try:
            item["messages"] = read_json(row["messages"])
        except ValueError as exc:
            raise ValueError(f"'messages' is not valid JSON ({exc})") from None
    else:
        item["messages"] = [{"role": "user", "content": row.get("prompt") or ""}]
    if row.get("rubric"):
        try:
            item["rubric"] = read_json(row["rubric"])
        except ValueError as exc:
            raise ValueError(f"'rubric' is not valid JSON ({exc})") from None
    item["tags"] = [t.strip() for t in (row.get("tags") or "").split(";") if t.strip()]
    return {k: v for k, v in item.items() if v is not None}


def _check(rows: list[tuple[int, object]], problems: list[str], source: str) -> ParsedSuite:
    limit = settings.KEEL_SUITE_MAX_ITEMS
    if len(rows) > limit:
        raise SuiteError(source, [f"{len(rows)} items is over the limit of {limit} "
                                  "(KEEL_SUITE_MAX_ITEMS)"])  # fmt: skip
    items: list[dict] = []
    seen: dict[str, int] = {}
    for number, item in rows:
        item_problems = validate_item(item)
        problems += [f"line {number}: {p}" for p in item_problems]
        if item_problems:
            continue
        if item["id"] in seen:
            problems.append(f"line {number}: id {item['id']!r} repeats line {seen[item['id']]}")
        seen[item["id"]] = number
        items.append(item)
    if not rows and not problems:
        problems.append("the file holds no items")
    if problems:
        raise SuiteError(source, sorted(problems, key=_line_number))
    return ParsedSuite(items=items, content_hash=content_hash(items))


def _line_number(problem: str) -> int:
    try:
        return int(problem.split(":", 1)[0].removeprefix("line "))
    except ValueError:
        return 0


def check_size(size: int, filename: str) -> None:
    limit = settings.KEEL_SUITE_MAX_BYTES
    if size > limit:
        raise SuiteError(filename, [f"the file is {size:,} bytes, over the limit of "
                                    f"{limit:,} (KEEL_SUITE_MAX_BYTES)"])  # fmt: skip


def parse_file(data: bytes, filename: str) -> ParsedSuite:
    """Parse an uploaded or local suite file, by its extension (.jsonl or .csv)."""
    check_size(len(data), filename)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SuiteError(filename, [f"the file is not UTF-8 text (byte {exc.start})"]) from None
    lower = filename.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return parse_jsonl(text, filename)
    if lower.endswith(".csv"):
        return parse_csv(text, filename)
    raise SuiteError(filename, ["the file must end in .jsonl or .csv"])


def content_hash(items: list[dict]) -> str:
    """sha256 of the canonical JSON of the items, in id order: any change changes it."""
    canonical = json.dumps(
        sorted(items, key=lambda i: i["id"]), sort_keys=True, separators=(",", ":"),
        ensure_ascii=False,
    )  # fmt: skip
    return hashlib.sha256(canonical.encode()).hexdigest()


@transaction.atomic
def suite_store(*, name: str, parsed: ParsedSuite, description: str, source: str,
                license: str, user=None) -> Suite:  # fmt: skip
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
        created_by=user if user is not None and user.is_authenticated else None,
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
            rubric=i.get("rubric") or [],
            tags=i.get("tags") or [],
            source=i.get("source") or source,
            license=i.get("license") or license,
        )
        for i in parsed.items
    )
    record(Action.IMPORT, suite, actor=user, details={
        "version": suite.version, "content_hash": suite.content_hash, "items": len(parsed.items),
        "source": source, "license": license,
    })  # fmt: skip
    return suite


def item_to_dict(item: Item) -> dict:
    """An item back in the file format, keys in their documented order."""
    return {
        "id": item.item_id, "split": item.split, "domain": item.domain,
        "trait": item.trait or None, "family": item.family or None, "kind": item.kind,
        "messages": item.messages, "chosen": item.chosen, "rejected": item.rejected,
        "rubric": item.rubric, "tags": item.tags, "source": item.source, "license": item.license,
    }  # fmt: skip
