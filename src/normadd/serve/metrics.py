"""Prometheus metrics of the service: requests, latency, forward passes, batch sizes and verdicts.

Each app has its own :class:`prometheus_client.CollectorRegistry` (no global state: two apps in
one process, as in the tests, count apart). ``GET /metrics`` answers in the Prometheus text
format. Routes are labelled by their template (``/v1/lines/{line}/inspect``), never by the raw
path, so a client cannot grow the number of series by inventing URLs; a path no route matches is
counted as ``unmatched``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServiceMetrics:
    """The service's metric families, registered in their own registry.

    Attributes:
        registry: Where the families live; :meth:`exposition` renders it.
        requests: ``normadd_http_requests_total{method, route, status}``.
        latency: ``normadd_http_request_duration_seconds{method, route}``.
        forward_passes: ``normadd_forward_passes_total{line}``.
        batch_images: ``normadd_batch_images{line}``, images per forward pass.
        pass_seconds: ``normadd_forward_pass_duration_seconds{line}``.
        images: ``normadd_images_inspected_total{line}``.
        verdicts: ``normadd_verdicts_total{line, verdict}`` (see :meth:`record_verdicts`).
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "normadd_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "normadd_http_request_duration_seconds",
            "Time from request to the end of the response, by method and route template.",
            ("method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.forward_passes = Counter(
            "normadd_forward_passes",
            "Forward passes of a line's model (one per micro-batch).",
            ("line",),
            registry=self.registry,
        )
        self.batch_images = Histogram(
            "normadd_batch_images",
            "Images per forward pass (concurrent requests share a pass).",
            ("line",),
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.pass_seconds = Histogram(
            "normadd_forward_pass_duration_seconds",
            "Duration of one forward pass, by line.",
            ("line",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "normadd_images_inspected", "Images inspected, by line.", ("line",), registry=self.registry
        )
        self.verdicts = Counter(
            "normadd_verdicts",
            "Verdicts given, by line and verdict (e.g. OK, NG).",
            ("line", "verdict"),
            registry=self.registry,
        )

    def record_pass(self, line: str, images: int, seconds: float) -> None:
        """Count one forward pass of ``images`` images that took ``seconds``."""
        self.forward_passes.labels(line).inc()
        self.batch_images.labels(line).observe(images)
        self.pass_seconds.labels(line).observe(seconds)
        self.images.labels(line).inc(images)

    def record_verdicts(self, line: str, verdicts: Iterable[str]) -> None:
        """Count the verdicts of one inspection (one entry per image, e.g. ``["OK", "NG"]``)."""
        for verdict in verdicts:
            self.verdicts.labels(line, str(verdict)).inc()

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


def route_template(scope: Scope, routes: Iterable[BaseRoute]) -> str:
    """The template of the route that answered (or would answer) a request; ``unmatched`` if none."""
    route = scope.get("route")
    if route is None:  # answered before routing (e.g. a body over the limit): match it here
        route = next((r for r in routes if r.matches(scope)[0] is Match.FULL), None)
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestMetrics:
    """ASGI middleware counting every HTTP request by route template and status, and timing it.

    Args:
        app: The wrapped application.
        metrics: Where to count.
        routes: The app's routes, to name requests answered before routing.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; count it once its response has started (500 if it never does)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = route_template(scope, self.routes)
            method = scope.get("method", "") if scope.get("method") in METHODS else "other"
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
