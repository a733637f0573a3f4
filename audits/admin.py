"""Suites and stored results in Django's admin: to look at, never to change. Results are
evidence: an edit there would change a report card behind the audit log's back, and an
edited item would no longer match its suite's content hash. Changes go through Keel's own
pages, API and commands, which record them."""

from django.contrib import admin

from audits.models import Audit, Item, Run, Score, Suite


class ReadOnly:
    """Shown, never added, changed or deleted (a model admin or an inline)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Suite)
class SuiteAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["name", "version", "content_hash", "source", "license", "created_at"]


@admin.register(Item)
class ItemAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["item_id", "suite", "split", "domain", "trait", "family", "kind"]
    list_filter = ["suite", "split", "domain", "trait", "kind"]
    search_fields = ["item_id"]


class RunInline(ReadOnly, admin.TabularInline):
    model = Run
    extra = 0
    fields = ["kind", "checkpoint", "status", "progress_done", "progress_total", "attempts"]
    readonly_fields = fields


@admin.register(Audit)
class AuditAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "checkpoint", "plan", "status", "created_by", "created_at"]
    list_filter = ["status", "plan"]
    inlines = [RunInline]


@admin.register(Score)
class ScoreAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["audit", "checkpoint", "domain", "trait", "condition", "metric", "value", "n"]
    list_filter = ["metric", "condition"]
