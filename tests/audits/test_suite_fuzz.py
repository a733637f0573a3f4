"""The suite importer fuzzed through the operator's upload form (the path a browser takes):
random bytes, valid files mutated field by field and line by line, and random valid files.
Whatever comes in, no server error; a refused file gets one sentence per problem and stores
nothing (no suite, no item, no audit-log event); a valid file is stored whole. Then the
limits (file size, item count, upload size, fields and files per form), each refused with a
sentence, from the form, the API and the command line."""

from __future__ import annotations

import csv
import io
import json
import re
from itertools import count
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token

from audits.models import DOMAINS, FAMILIES, TRAITS, Event, Item, Suite

STARTER = Path(__file__).resolve().parents[2] / "audits" / "suites" / "starter.jsonl"
BASE_ITEMS = [json.loads(line) for line in STARTER.read_text().splitlines()[:3]]
CSV_COLUMNS = ["id", "split", "domain", "trait", "family", "kind", "chosen", "rejected",
               "messages", "rubric", "tags"]  # fmt: skip
NAMES = count(1)

# Derandomized: the same cases every run, so a red run means a change, not luck (raise
# max_examples and drop derandomize to explore further by hand).
FUZZ = settings(
    max_examples=40, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip

HOSTILE_TEXT = st.sampled_from([
    "", " ", "\x00", "a\x00b", "\ud800", "x\udfffy", "😀", "\u202e", "<script>x</script>",
    "' OR 1=1 --", "=cmd|' /C calc'!A0", "x" * 300, "\r\n", "\\", '"', "\ufeff",
])  # fmt: skip
HOSTILE_VALUE = st.one_of(
    HOSTILE_TEXT,
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([10**40, -(10**40), [], {}, [[[[[]]]]], {"a": {"b": {"c": None}}}]),
    st.lists(HOSTILE_TEXT, max_size=3),
    st.dictionaries(st.text(max_size=5), HOSTILE_TEXT, max_size=3),
)  # fmt: skip
KEYS = ["id", "split", "domain", "trait", "family", "kind", "messages", "chosen", "rejected",
        "rubric", "tags", "source", "license", "unknown"]  # fmt: skip
SUFFIXES = [".jsonl", ".csv", ".ndjson", ".JSONL", ".txt", ""]


def counts() -> tuple[int, int, int]:
    return Suite.objects.count(), Item.objects.count(), Event.objects.count()


def upload(client, data: bytes, filename: str):
    """POST the file to /suites/import/ under a fresh name; the response and the name."""
    name = f"fuzz-{next(NAMES)}"
    form = {"file": SimpleUploadedFile(filename, data), "name": name, "license": "CC0-1.0",
            "source": "fuzz"}  # fmt: skip
    return client.post("/suites/import/", form), name


def assert_refused_or_stored(client, data: bytes, filename: str) -> str:
    """The importer's promise for any file; returns what happened."""
    before = counts()
    response, name = upload(client, data, filename)
    assert response.status_code in (200, 302), response.status_code
    if response.status_code == 302:
        suite = Suite.objects.get(name=name)
        assert response.url == f"/suites/{name}/"
        assert counts()[0] == before[0] + 1
        assert counts()[1] == before[1] + suite.items.count() > before[1]
        return "stored"
    errors = response.context["form"].errors
    assert errors, "a refusal with no message"
    for messages in errors.values():
        for message in messages:
            assert len(message.split()) >= 2 and "Traceback" not in message, message
    assert counts() == before, "a refused file stored something"
    return "refused"


def to_jsonl(items: list) -> bytes:
    return "\n".join(json.dumps(i) for i in items).encode()


def to_csv(items: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for item in items:
        row = {k: item.get(k) for k in CSV_COLUMNS}
        for key in ("messages", "rubric"):
            row[key] = json.dumps(row[key])
        row["tags"] = ";".join(item.get("tags") or [])
        writer.writerow(row)
    return out.getvalue().encode("utf-8", "surrogatepass")  # bytes as a careless tool writes


@pytest.fixture
def importer(client, operator):
    client.force_login(operator)
    return client


# --- Fuzzing --------------------------------------------------------------------------------


@given(data=st.binary(max_size=3000), suffix=st.sampled_from(SUFFIXES))
@FUZZ
def test_random_bytes_never_fail_the_importer(importer, data, suffix):
    assert_refused_or_stored(importer, data, "random" + suffix)


@st.composite
def mutated_items(draw) -> list:
    items = [dict(i) for i in BASE_ITEMS]
    for _ in range(draw(st.integers(1, 3))):
        item = items[draw(st.integers(0, len(items) - 1))]
        key = draw(st.sampled_from(KEYS))
        action = draw(st.sampled_from(["set", "delete", "nest"]))
        if action == "delete":
            item.pop(key, None)
        elif action == "nest" and key in ("messages", "rubric"):
            item[key] = [
                {
                    "role": draw(HOSTILE_TEXT),
                    "content": draw(HOSTILE_VALUE),
                    "criterion": draw(HOSTILE_VALUE),
                    "weight": draw(HOSTILE_VALUE),
                }
            ]
        else:
            item[key] = draw(HOSTILE_VALUE)
    if draw(st.booleans()):  # a whole line replaced by something that is not an object
        items[draw(st.integers(0, len(items) - 1))] = draw(HOSTILE_VALUE)
    return items


@given(items=mutated_items())
@FUZZ
def test_mutated_json_lines_are_refused_or_stored_never_an_error(importer, items):
    assert_refused_or_stored(importer, to_jsonl(items), "mutated.jsonl")


@given(items=mutated_items())
@FUZZ
def test_mutated_csv_rows_are_refused_or_stored_never_an_error(importer, items):
    rows = [i if isinstance(i, dict) else {"id": i} for i in items]
    assert_refused_or_stored(importer, to_csv(rows), "mutated.csv")


@st.composite
def damaged_file(draw) -> tuple[bytes, str]:
    """A valid file, then damaged as files get damaged: cut short, bytes flipped or
    inserted, lines swapped or repeated, another encoding."""
    suffix = draw(st.sampled_from([".jsonl", ".csv"]))
    data = to_jsonl(BASE_ITEMS) if suffix == ".jsonl" else to_csv(BASE_ITEMS)
    damage = draw(st.sampled_from(["cut", "flip", "insert", "repeat", "utf16", "bom", "crlf"]))
    at = draw(st.integers(0, len(data) - 1))
    if damage == "cut":
        data = data[:at]
    elif damage == "flip":
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    elif damage == "insert":
        data = data[:at] + draw(st.binary(min_size=1, max_size=20)) + data[at:]
    elif damage == "repeat":
        lines = data.splitlines()
        data = b"\n".join([*lines, lines[draw(st.integers(0, len(lines) - 1))]])
    elif damage == "utf16":
        data = data.decode().encode("utf-16")
    elif damage == "bom":
        data = b"\xef\xbb\xbf" + data
    else:
        data = data.replace(b"\n", b"\r\n")
    return data, "damaged" + suffix


@given(case=damaged_file())
@FUZZ
def test_damaged_files_are_refused_or_stored_never_an_error(importer, case):
    assert_refused_or_stored(importer, *case)


TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
    max_size=40,
).filter(str.strip)  # fmt: skip


@st.composite
def valid_items(draw) -> list[dict]:
    items = []
    for n in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["benefit", "misalignment"]))
        chosen, rejected = draw(st.lists(TEXT, min_size=2, max_size=2, unique=True))
        items.append({
            "id": f"item-{n}-{draw(TEXT)}"[:200], "split": draw(st.sampled_from(["train", "eval"])),
            "domain": draw(st.sampled_from(DOMAINS)),
            "trait": draw(st.sampled_from(TRAITS)) if kind == "benefit" else None,
            "family": draw(st.sampled_from(FAMILIES)) if kind == "misalignment" else None,
            "kind": kind, "messages": [{"role": "user", "content": draw(TEXT)}],
            "chosen": chosen, "rejected": rejected,
            "rubric": [{"criterion": draw(TEXT), "weight": draw(st.floats(0, 5))}],
            "tags": draw(st.lists(TEXT.filter(lambda t: ";" not in t and t == t.strip()),
                                  max_size=2)),
        })  # fmt: skip
    return items


@given(items=valid_items(), suffix=st.sampled_from([".jsonl", ".csv"]))
@FUZZ
def test_valid_files_are_stored_whole(importer, items, suffix):
    data = to_jsonl(items) if suffix == ".jsonl" else to_csv(items)
    assert assert_refused_or_stored(importer, data, "valid" + suffix) == "stored"
    suite = Suite.objects.order_by("-id").first()
    stored = {i.item_id: i for i in suite.items.all()}
    assert sorted(stored) == sorted(i["id"] for i in items)
    for item in items:
        assert stored[item["id"]].messages == item["messages"]
        assert stored[item["id"]].chosen == item["chosen"]


# --- Each hostile case, with the sentence it gets ------------------------------------------


def first(**changes) -> dict:
    return {**BASE_ITEMS[0], **changes}


WEIGHT = to_jsonl([first(rubric=[{"criterion": "c", "weight": 1.5}])])
HOSTILE_FILES = [
    ("NUL in a reply", to_jsonl([first(chosen="a\x00b")]), "the text holds a NUL character"),
    ("NUL in a message", to_jsonl([first(messages=[{"role": "user", "content": "\x00"}])]),
     "the text holds a NUL character"),
    ("unpaired surrogate", to_jsonl([first(rejected="\ud800")]), "an unpaired surrogate"),
    ("NaN weight", to_jsonl([first(rubric=[{"criterion": "c", "weight": float("nan")}])]),
     "NaN is not a JSON number; write a number or null"),
    ("Infinity", to_jsonl([first(rubric=[{"criterion": "c", "weight": float("-inf")}])]),
     "-Infinity is not a JSON number"),
    ("a number past a float", WEIGHT.replace(b"1.5", b"1e400"), "the number 1e400 is too large"),
    ("a 5000-digit number", WEIGHT.replace(b"1.5", b"9" * 5000), "has more than 30 digits"),
    ("nesting 100000 deep", b"[" * 100_000, "nested too deeply to read"),
    ("a trait on a probe", to_jsonl([first(kind="misalignment", family="deception",
                                           trait="x" * 80)]),
     "'trait' must be one of truthfulness"),
    ("a long source", to_jsonl([first(source="s" * 201)]),
     "'source' must be text of at most 200 characters"),
    ("a licence that is not text", to_jsonl([first(license={"spdx": "MIT"})]),
     "'license' must be text of at most 100 characters"),
    ("a 40-bit id", to_jsonl([first(id=2**40)]), "'id' must be a non-empty string"),
    ("UTF-16", to_jsonl(BASE_ITEMS).decode().encode("utf-16"), "the file is not UTF-8 text"),
    ("Latin-1", "é".encode("latin-1"), "the file is not UTF-8 text (byte 0)"),
    ("an empty file", b"", "The submitted file is empty."),
    ("blank lines only", b"\n \n\t\n", "the file holds no items"),
    ("a PNG named .jsonl", b"\x89PNG\r\n\x1a\n\x00\x00", "the file is not UTF-8 text"),
    ("a CSV field over 128 KiB", to_csv([first(chosen="x" * 140_000)]),
     "line 2: a field is longer than 131,072 characters"),
    ("a CSV without the columns", b"a,b\n1,2\n", "the header lacks column(s) id, split"),
    ("a CSV row wider than its header",
     to_csv(BASE_ITEMS[:1]) + b"x,eval,health,,,,a,b,[],[],,extra\n",
     "more fields than the header has columns"),
    ("a CSV quote never closed", to_csv(BASE_ITEMS[:1]) + b'"open,eval\n',
     "line 3"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "data", "problem"), HOSTILE_FILES, ids=[c[0] for c in HOSTILE_FILES]
)
def test_each_hostile_file_gets_its_sentence(importer, what, data, problem):
    suffix = ".csv" if "CSV" in what else ".jsonl"
    before = counts()
    response, _ = upload(importer, data, "hostile" + suffix)
    assert response.status_code == 200
    errors = " ".join(response.context["form"].errors["file"])
    assert problem in errors, errors
    assert counts() == before


def test_the_wrong_extension_is_refused(importer):
    response, _ = upload(importer, to_jsonl(BASE_ITEMS), "items.json")
    assert response.context["form"].errors["file"] == ["the file must end in .jsonl or .csv"]


# --- Limits ----------------------------------------------------------------------------------


def test_a_file_over_the_size_limit_is_refused_from_every_door(importer, operator, settings,
                                                                tmp_path):  # fmt: skip
    settings.KEEL_SUITE_MAX_BYTES = 1000
    data = to_jsonl(BASE_ITEMS)
    assert len(data) > 1000
    before = counts()
    response, _ = upload(importer, data, "big.jsonl")
    expected = f"the file is {len(data):,} bytes, over the limit of 1,000 (KEEL_SUITE_MAX_BYTES)"
    assert response.context["form"].errors["file"] == [expected]

    token = Token.objects.create(user=operator).key
    api = importer.post("/api/v1/suites/", {"file": SimpleUploadedFile("big.jsonl", data),
                                            "name": "big-api"},
                        HTTP_AUTHORIZATION=f"Token {token}")  # fmt: skip
    assert api.status_code == 400
    assert api.json() == {"detail": "The file has problems; nothing was stored.",
                          "problems": [expected]}  # fmt: skip

    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    with pytest.raises(CommandError) as refused:
        call_command("suites", "import", str(path), "--name", "big-cli")
    assert expected in str(refused.value) and refused.value.returncode == 2
    assert counts() == before


def test_a_file_over_the_item_limit_is_refused(importer, settings):
    settings.KEEL_SUITE_MAX_ITEMS = 2
    before = counts()
    response, _ = upload(importer, to_jsonl(BASE_ITEMS), "many.jsonl")
    assert response.context["form"].errors["file"] == [
        "3 items is over the limit of 2 (KEEL_SUITE_MAX_ITEMS)"
    ]
    assert counts() == before


def test_an_upload_over_the_request_limit_gets_413_with_a_sentence(importer, settings):
    settings.KEEL_SUITE_MAX_BYTES = 1000
    settings.KEEL_MAX_UPLOAD_BYTES = 2000
    response, _ = upload(importer, b"x" * 3000, "huge.jsonl")
    assert response.status_code == 413
    page = response.content.decode()
    assert re.search(
        r"The upload is 3\.\d KiB; Keel accepts at most 2\.0 KiB \(a suite file up to "
        r"KEEL_SUITE_MAX_BYTES, 1000 bytes, and the form around it\)\. Split the file into "
        r"smaller suites\.",
        page,
    ), page


def test_too_many_files_in_one_form_get_a_sentence(importer, settings):
    files = {f"file{i}": SimpleUploadedFile(f"{i}.jsonl", b"{}") for i in range(11)}
    response = importer.post("/suites/import/", files)
    assert response.status_code == 400
    assert "The form has more than 10 files (DATA_UPLOAD_MAX_NUMBER_FILES); send one suite " \
           "file at a time." in response.content.decode()  # fmt: skip


def test_a_file_name_with_nul_or_a_path_is_only_a_name(importer):
    """Django keeps the printable last part of an uploaded file's name; Keel stores none."""
    for filename in ("evil\x00.jsonl", "../../etc/items.jsonl", "C:\\x\\items.jsonl"):
        response, name = upload(importer, to_jsonl(BASE_ITEMS), filename)
        assert response.status_code == 302, filename
        assert Suite.objects.filter(name=name).exists()
