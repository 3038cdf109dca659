"""Run the fake upstream in the foreground: python -m tests.fake_upstream --port 9100 [--latency-ms 50]."""

from __future__ import annotations

import argparse

from aiohttp import web

from .server import DEFAULT_MODELS, UpstreamState, build_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0, help="base latency added to every model call")
    parser.add_argument("--spread", action="store_true", help="spread the latency between stream chunks")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated ids for /v1/models")
    args = parser.parse_args(argv)
    state = UpstreamState(
        models=[m for m in args.models.split(",") if m],
        latency_ms=args.latency_ms,
        spread_stream_latency=args.spread,
    )
    print(f"fake upstream on http://{args.host}:{args.port} (latency {args.latency_ms} ms); Ctrl-C to stop", flush=True)
    web.run_app(
        build_app(state),
        host=args.host,
        port=args.port,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1,
        backlog=1024,
        print=None,
    )


if __name__ == "__main__":
    main()
