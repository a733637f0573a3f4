"""Request-level defences: the Content-Security-Policy on every response, and a refusal, with
a sentence that says what to change, of requests Keel will not read.

Django answers a form over its limits with a bare "Bad Request (400)", and PostgreSQL cannot
store or even compare a string that holds NUL, so a page whose query reached the database
with one failed with a server error. Both are answered here, once, before any view runs.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import render

NUL = "\x00"
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


class ContentSecurityPolicyMiddleware:
    """Sets KEEL_CSP on every response that has no policy of its own: scripts only from
    Keel's own static files, nothing framed, forms posted only back to Keel."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if settings.KEEL_CSP and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = settings.KEEL_CSP
        return response


class InputLimitsMiddleware:
    """Refuses, before any view: NUL in the path, the query or a form field (400); a body
    over the limits (413); a form with too many fields or files, or one that cannot be read
    (400). The API answers JSON (`detail`), pages an HTML page."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        refusal = problem_with(request)
        if refusal is not None:
            return refuse(request, *refusal)
        return self.get_response(request)


def problem_with(request: HttpRequest) -> tuple[int, str] | None:
    if NUL in request.path:
        return 400, "The address contains a NUL character (%00); remove it and try again."
    for key, values in request.GET.lists():
        if NUL in key or any(NUL in v for v in values):
            return 400, (
                f"The query parameter {_shown(key)!r} contains a NUL character (%00); remove "
                "it and try again."
            )
    too_big = _body_too_big(request)
    if too_big:
        return 413, too_big
    if request.method != "POST" or request.content_type not in FORMS:
        return None
    try:
        fields = request.POST  # parses the files too
    except RequestDataTooBig:
        return 413, (
            f"The form's fields hold more than {_size(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)} "
            "(DATA_UPLOAD_MAX_MEMORY_SIZE). Send large content as a file upload."
        )
    except TooManyFieldsSent:
        return 400, (
            f"The form has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields "
            "(DATA_UPLOAD_MAX_NUMBER_FIELDS); send fewer at a time."
        )
    except TooManyFilesSent:
        return 400, (
            f"The form has more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files "
            "(DATA_UPLOAD_MAX_NUMBER_FILES); send one suite file at a time."
        )
    except MultiPartParserError as exc:
        return 400, f"The form could not be read ({exc}); send it again from Keel's page."
    for key, values in fields.lists():
        if NUL in key or any(NUL in v for v in values):
            return 400, (
                f"The form field {_shown(key)!r} contains a NUL character; remove it and try again."
            )
    return None  # a file's name: Django keeps only its printable last part


def _body_too_big(request: HttpRequest) -> str:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return ""
    if request.content_type == "multipart/form-data":
        limit = settings.KEEL_MAX_UPLOAD_BYTES
        if length > limit:
            return (
                f"The upload is {_size(length)}; Keel accepts at most {_size(limit)} (a suite "
                f"file up to KEEL_SUITE_MAX_BYTES, {_size(settings.KEEL_SUITE_MAX_BYTES)}, and "
                "the form around it). Split the file into smaller suites."
            )
        return ""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is not None and length > limit:
        return (
            f"The request body is {_size(length)}; Keel accepts at most {_size(limit)} "
            "outside a file upload (DATA_UPLOAD_MAX_MEMORY_SIZE). Send less at a time."
        )
    return ""


def refuse(request: HttpRequest, status: int, reason: str) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": reason}, status=status)
    title = "Request too large" if status == 413 else "Bad request"
    return render(request, "400.html", {"title": title, "reason": reason}, status=status)


def _shown(key: str) -> str:
    return key.replace(NUL, "%00")[:100]


def _size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"
