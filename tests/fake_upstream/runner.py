"""FakeUpstream: the fake upstream server running in a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from .server import Fault, RecordedRequest, UpstreamState, build_app


class FakeUpstream:
    """The server running in a background thread with its own event loop. Use start_fake_upstream()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **settings: Any) -> None:
        self.host = host
        self.port = port
        self.state = UpstreamState(**settings)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeUpstream:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._serve(ready))
            except BaseException as exc:  # reported to start()
                errors.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name=f"fake-upstream-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(10) or errors:
            self._thread.join(1)
            raise RuntimeError("fake upstream failed to start") from (errors[0] if errors else None)
        return self

    async def _serve(self, ready: threading.Event) -> None:
        runner = web.AppRunner(build_app(self.state), access_log=None, handler_cancellation=True, shutdown_timeout=0.2)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
            self.port = runner.addresses[0][1]
            self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
            ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            try:
                self._loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:  # loop already closed
                pass
        self._thread.join(10)
        self._thread = self._loop = self._stopping = None

    def __enter__(self) -> FakeUpstream:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- inspection and control ---

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.state.requests()

    def last_request(self) -> RecordedRequest | None:
        records = self.state.requests()
        return records[-1] if records else None

    def keys_seen(self) -> list[str]:
        return [r["key"] for r in self.state.requests() if r["key"]]

    def reset(self) -> None:
        self.state.reset()

    def set_fault(
        self,
        mode: str,
        *,
        path_contains: str | None = None,
        key: str | None = None,
        times: int | None = None,
        **opts: Any,
    ) -> Fault:
        fault = Fault(mode, path_contains=path_contains, key=key, times=times, opts=opts)
        self.state.add_fault(fault)
        return fault

    def clear_faults(self) -> None:
        self.state.clear_faults()

    def set_models(self, model_ids: list[str]) -> None:
        self.state.models = list(model_ids)

    def set_latency(self, latency_ms: float, *, spread_stream: bool | None = None) -> None:
        self.state.latency_ms = latency_ms
        if spread_stream is not None:
            self.state.spread_stream_latency = spread_stream


def start_fake_upstream(port: int = 0, host: str = "127.0.0.1", **settings: Any) -> FakeUpstream:
    """Start a FakeUpstream (settings: models, latency_ms, spread_stream_latency, reply) and return it running."""
    return FakeUpstream(host, port, **settings).start()
