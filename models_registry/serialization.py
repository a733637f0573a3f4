"""The serialization format of Keel's backups: Django's JSON Lines, exact to the microsecond.

Django's own JSON encoder cuts datetimes to milliseconds. The audit log hashes each event's
time to the microsecond, and report cards carry the times they cite, so a dump in Django's
format would load into a database whose audit log no longer verifies. This format keeps
full ISO times and is otherwise Django's ``jsonl`` (one object per line, read line by line).

Rows keep their primary keys (audit 7 stays audit 7, and the log's object ids stay right),
except Keel's role groups, which migrations create in every database: those are matched by
name.
"""

from __future__ import annotations

import datetime

from django.core.serializers import jsonl
from django.core.serializers.json import DjangoJSONEncoder

NAME = "keeljsonl"
MATCHED_BY_NAME = {"auth.group"}


class ExactJSONEncoder(DjangoJSONEncoder):
    def default(self, o):
        if isinstance(o, datetime.datetime | datetime.time):
            return o.isoformat()
        return super().default(o)


class Serializer(jsonl.Serializer):
    """Call with use_natural_foreign_keys=True and use_natural_primary_keys=True."""

    def _init_options(self):
        super()._init_options()
        self.json_kwargs["cls"] = ExactJSONEncoder

    def get_dump_object(self, obj):
        data = super().get_dump_object(obj)
        if "pk" not in data and obj._meta.label_lower not in MATCHED_BY_NAME:
            data = {"model": data["model"], "pk": self._value_from_field(obj, obj._meta.pk),
                    "fields": data["fields"]}  # fmt: skip
        return data


Deserializer = jsonl.Deserializer
