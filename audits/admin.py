from django.contrib import admin

from audits.models import Audit, Item, Run, Score, Suite


@admin.register(Suite)
class SuiteAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "content_hash", "source", "license", "created_at"]


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["item_id", "suite", "split", "domain", "trait", "family", "kind"]
    list_filter = ["suite", "split", "domain", "trait", "kind"]
    search_fields = ["item_id"]


class RunInline(admin.TabularInline):
    model = Run
    extra = 0
    fields = ["kind", "checkpoint", "status", "progress_done", "progress_total", "attempts"]
    readonly_fields = fields


@admin.register(Audit)
class AuditAdmin(admin.ModelAdmin):
    list_display = ["id", "checkpoint", "plan", "status", "created_by", "created_at"]
    list_filter = ["status", "plan"]
    inlines = [RunInline]
    readonly_fields = ["config", "config_hash"]


@admin.register(Score)
class ScoreAdmin(admin.ModelAdmin):
    list_display = ["audit", "checkpoint", "domain", "trait", "condition", "metric", "value", "n"]
    list_filter = ["metric", "condition"]
