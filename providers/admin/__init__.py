"""Django admin of providers and models (registered on import).

provider.py: ProviderAdmin (add wizard in wizard.py); aimodel.py: AIModelAdmin; forms.py: every form;
sharing.py: ACL grants; checks.py: connectivity test / validation calls; discovery.py: GET {base}/models.
"""
from .aimodel import AIModelAdmin
from .provider import ProviderAdmin
from .schedules import PeriodicTaskAdmin
from .usage import UsageRecordAdmin

__all__ = ["AIModelAdmin", "PeriodicTaskAdmin", "ProviderAdmin", "UsageRecordAdmin"]
