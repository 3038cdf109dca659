"""Where the admin starts connectivity tests and model validations.

Both run inline for now (a real LiteLLM call, bounded by PROVIDER_TEST_TIMEOUT) and record a ProviderCheck.
A later issue queues them on Celery instead: only these two functions change then.
"""
from __future__ import annotations

from .. import connectivity
from ..models import AIModel, Provider


def run_provider_test(provider: Provider) -> connectivity.CheckOutcome:
    return connectivity.provider_test(provider=provider)


def run_model_validate(model: AIModel) -> connectivity.CheckOutcome:
    return connectivity.model_validate(model=model)
