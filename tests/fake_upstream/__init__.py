"""Fake LLM upstream (OpenAI, Azure OpenAI, Anthropic) for tests and benchmarks; see server.py for usage."""

from .runner import FakeUpstream, start_fake_upstream
from .server import REPLY, Fault, RecordedRequest, UpstreamState, build_app, extract_key

__all__ = [
    "REPLY",
    "Fault",
    "FakeUpstream",
    "RecordedRequest",
    "UpstreamState",
    "build_app",
    "extract_key",
    "start_fake_upstream",
]
