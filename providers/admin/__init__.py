"""Django admin of providers and models (registered on import).

provider.py: ProviderAdmin (add wizard in wizard.py); aimodel.py: AIModelAdmin; forms.py: every form;
sharing.py: ACL grants; checks.py: connectivity test / validation calls; discovery.py: GET {base}/models.
"""
from providers.admin.aimodel import AIModelAdmin
from providers.admin.provider import ProviderAdmin
from providers.admin.schedules import PeriodicTaskAdmin
from providers.admin.usage import UsageRecordAdmin
from providers.admin import tenant_page  # noqa: F401 - the tenant page's models and usage sections

__all__ = ["AIModelAdmin", "PeriodicTaskAdmin", "ProviderAdmin", "UsageRecordAdmin"]
