"""The vendor service's Prometheus metrics, in a registry of its own.

``tether_vendor_api_requests_total`` counts every HTTP request by route *template*
(``/api/cases/{case_id}``, never the path a client sent: paths are unbounded and may
carry serials), method and status; a request no route matched counts as
``unmatched``. ``tether_vendor_cases_pending`` is read from the store at each scrape.
They are exposed on the internal ``[metrics] listen`` endpoint only, never on the API's
own address.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The route label of a request that matched no route (scanners, typos).
UNMATCHED = "unmatched"
#: Methods counted by name; anything else is ``other`` (a label set must stay bounded).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class VendorMetrics:
    """Every metric one vendor service exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tether_vendor_api_requests",
            "HTTP requests to the vendor service, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "tether_vendor_api_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            registry=self.registry,
        )
        self.cases_pending = Gauge(
            "tether_vendor_cases_pending",
            "One-click support cases waiting for a decision (read at each scrape).",
            registry=self.registry,
        )
        self.database_up = Gauge(
            "tether_vendor_database_up",
            "1 while the vendor database answers the service, else 0 (checked at each scrape).",
            registry=self.registry,
        )


class RequestMetrics:
    """ASGI middleware counting each HTTP request into :class:`VendorMetrics`."""

    def __init__(self, app: ASGIApp, metrics: VendorMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app fails before answering
        started = time.monotonic()

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            # The router writes the matched route into this very scope dict.
            route = getattr(scope.get("route"), "path", None)
            template = route if isinstance(route, str) else UNMATCHED
            method = scope.get("method", "")
            self.metrics.requests.labels(
                template, method if method in _METHODS else "other", str(status)
            ).inc()
            self.metrics.request_duration.labels(template).observe(time.monotonic() - started)
