"""The HTTP side port of every service: /livez, /readyz and /metrics.

Kept apart from the gRPC port so that Kubernetes probes and Prometheus
scrapes never queue behind application traffic.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from arbridge_runtime import tracing
from arbridge_runtime.metrics import ServiceMetrics

_HttpHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def observed(metrics: ServiceMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp middleware for public HTTP apps: a server span per request (the child of a
    ``traceparent`` the caller sent) and the request-duration histogram by route and status.

    Spans and metrics name the route's template (``/v1/intacct/{account_id}/{token}``),
    never the path, so URL tokens stay out of traces and label values.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: _HttpHandler) -> web.StreamResponse:
        info = request.match_info
        route = info.route.resource.canonical if info.route.resource is not None else "unmatched"
        started = time.perf_counter()
        status = 500
        with tracing.span(
            f"{request.method} {route}",
            parent=dict(request.headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route},
        ) as span:
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                span.set_attribute("http.response.status_code", status)
                metrics.http_duration.labels(route=route, status=str(status)).observe(
                    time.perf_counter() - started
                )

    return middleware


class SidePort:
    """Serves liveness, readiness and metrics on its own port."""

    def __init__(
        self, *, host: str, port: int, metrics: ServiceMetrics, ready: Callable[[], bool]
    ) -> None:
        self._host = host
        self._port = port
        self._metrics = metrics
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        return app

    async def _livez(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    async def _metrics_handler(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> int:
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
