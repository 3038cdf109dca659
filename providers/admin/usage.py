"""Usage page: every gateway call (read-only), filterable, with totals for the current filter."""
from django.contrib import admin
from django.db.models import Avg, Count, Q, Sum

from tenants.admin import NotFoundOutsideScopeMixin, ReadOnlyAdminMixin

from providers.models import UsageRecord
from providers.selectors import Principal, usage_list


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdminMixin, NotFoundOutsideScopeMixin, admin.ModelAdmin):
    list_display = ("created_at", "tenant", "requested_model", "model", "provider", "endpoint", "status",
                    "http_status", "tokens_in", "tokens_out", "cost", "latency_ms", "ttft_ms", "streamed")
    # Related filters offer only what the user's records reference (a plain one would list every tenant).
    list_filter = ("status", "endpoint", "streamed", ("tenant", admin.RelatedOnlyFieldListFilter),
                   ("provider", admin.RelatedOnlyFieldListFilter), "http_status")
    search_fields = ("requested_model", "model__model_id", "model__alias", "error_type")
    date_hierarchy = "created_at"
    list_select_related = ("tenant", "model", "provider")
    change_list_template = "admin/providers/usagerecord/change_list.html"
    show_full_result_count = False

    def get_queryset(self, request):
        # Superusers see every tenant; tenant admins their tenants' usage (one filter: providers.selectors).
        return usage_list(principal=Principal.for_user(request.user)).select_related("tenant")

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        try:
            qs = response.context_data["cl"].queryset
        except (AttributeError, KeyError):
            return response  # a redirect or an error page
        response.context_data["totals"] = qs.order_by().aggregate(
            calls=Count("id"), errors=Count("id", filter=Q(status="error")), tokens_in=Sum("tokens_in"),
            tokens_out=Sum("tokens_out"), cost=Sum("cost"), mean_latency=Avg("latency_ms"))
        return response
