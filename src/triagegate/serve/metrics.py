"""Prometheus metrics for one app instance, in its own registry (two apps never share counters).

HTTP metrics are labelled by route template, never by raw path, and ticket metrics by
values the graph bounds (tier names, taxonomy categories, node names, model aliases and the
endpoints its bindings name), so label cardinality stays fixed whatever clients send.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from triagegate.types import Outcome

if TYPE_CHECKING:
    from triagegate.tuning.monitoring import MonitoringReport

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServiceMetrics:
    """Counters and histograms of the HTTP layer and of the tickets it ran."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, categories: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._categories = frozenset(categories)
        r = self.registry
        self.requests = Counter(
            "triagegate_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "triagegate_http_request_duration_seconds",
            "Time from request start to the end of the response.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("triagegate_http_in_flight", "HTTP requests being answered.", registry=r)
        self.tickets = Counter(
            "triagegate_tickets",
            "Tickets run, by the tier that answered (route), status and category.",
            ["route", "status", "category"],
            registry=r,
        )
        self.escalations = Counter(
            "triagegate_escalations",
            "Reasons tickets went past a tier (a gate escalated them or the pre-gate skipped the tier).",
            ["reason"],
            registry=r,
        )
        self.decisions = Counter(
            "triagegate_gate_decisions",
            "Decisions on the cascade's edges, by tier and route (keep, escalate, skip).",
            ["tier", "route"],
            registry=r,
        )
        self.node_seconds = Histogram(
            "triagegate_node_duration_seconds",
            "Wall time of each graph node.",
            ["node"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "triagegate_model_tokens",
            "Model tokens, by model alias and direction.",
            ["model", "direction"],
            registry=r,
        )
        self.cost = Counter(
            "triagegate_model_cost_usd", "Model cost in USD, by model alias.", ["model"], registry=r
        )
        self.provider_errors = Counter(
            "triagegate_provider_errors",
            "Node runs whose model call failed after retries and fallbacks.",
            ["node", "model"],
            registry=r,
        )
        self.confidence_fallbacks = Counter(
            "triagegate_confidence_fallbacks",
            "Triage replies without the log-probabilities their model is bound for, by reason.",
            ["reason"],
            registry=r,
        )
        self.endpoint_answers = Counter(
            "triagegate_model_endpoint_answers",
            "Node runs answered, by model alias and the endpoint that answered (alias@host[:port]).",
            ["model", "endpoint"],
            registry=r,
        )
        self.reply_warnings = Counter(
            "triagegate_model_reply_warnings",
            "Model replies not taken as given (token counts replaced by estimates), by alias and code.",
            ["model", "warning"],
            registry=r,
        )

        self.store_errors = Counter(
            "triagegate_store_errors",
            "Outcomes or shadow verdicts the outcome store failed to write.",
            registry=r,
        )
        self.shadow_capped = Gauge(
            "triagegate_shadow_budget_capped",
            "Sampled tickets not shadowed since start because the tier's daily shadow budget was spent.",
            ["tier"],
            registry=r,
        )
        self.shadow_runs = Gauge(
            "triagegate_shadow_runs",
            "Shadow runs finished since start, by the tier that kept the ticket.",
            ["tier"],
            registry=r,
        )
        self.shadow_spent = Gauge(
            "triagegate_shadow_cost_usd",
            "USD spent on shadow runs since start, by tier.",
            ["tier"],
            registry=r,
        )
        window = "in the outcome store over the report window (triagegate report)"
        self.report_tickets = Gauge("triagegate_report_tickets", f"Tickets {window}.", registry=r)
        self.tier_share = Gauge(
            "triagegate_report_tier_share",
            f"Share of tickets each tier answered, {window}.",
            ["tier"],
            registry=r,
        )
        self.kept_precision = Gauge(
            "triagegate_report_kept_precision",
            f"Precision of kept answers from shadow and human labels with its 95% Wilson bounds, {window}.",
            ["tier", "bound"],
            registry=r,
        )
        self.kept_labels = Gauge(
            "triagegate_report_kept_labels", f"Labelled kept answers, {window}.", ["tier"], registry=r
        )
        self.precision_alert = Gauge(
            "triagegate_report_precision_alert",
            f"1 when the lower bound of kept precision is under the tier's target, {window}.",
            ["tier"],
            registry=r,
        )
        self.confidence_psi = Gauge(
            "triagegate_report_confidence_psi",
            f"Population stability index of the tier's confidences against its calibration data, {window}.",
            ["tier"],
            registry=r,
        )
        self.cost_ratio = Gauge(
            "triagegate_report_cost_ratio_all_flagship",
            f"Cost as a share of sending every ticket to the last tier, {window}.",
            registry=r,
        )

    def observe_shadows(
        self, capped: Mapping[str, int], runs: Mapping[str, int], spent: Mapping[str, float]
    ) -> None:
        for tier, count in capped.items():
            self.shadow_capped.labels(tier[:64]).set(count)
        for tier, count in runs.items():
            self.shadow_runs.labels(tier[:64]).set(count)
        for tier, usd in spent.items():
            self.shadow_spent.labels(tier[:64]).set(usd)

    def observe_report(self, report: MonitoringReport) -> None:
        """Set the report gauges from the store's figures (tiers come from the graphs, so labels stay bounded)."""
        self.report_tickets.set(report.tickets)
        if report.cost.ratio is not None:
            self.cost_ratio.set(report.cost.ratio)
        for t in report.tiers:
            tier = t.tier[:64]
            self.tier_share.labels(tier).set(t.share)
            if t.psi is not None:
                self.confidence_psi.labels(tier).set(t.psi)
            p = t.precision
            if p is None:
                continue
            self.kept_labels.labels(tier).set(p.labelled)
            self.precision_alert.labels(tier).set(1 if t.alert else 0)
            for bound, value in (("estimate", p.precision), ("low", p.low), ("high", p.high)):
                if value is not None:
                    self.kept_precision.labels(tier, bound).set(value)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_outcome(self, outcome: Outcome) -> None:
        category = outcome.category or "none"
        if category not in self._categories and category != "none":
            category = "other"
        self.tickets.labels(outcome.route, outcome.status, category).inc()
        for reason in outcome.escalation_reasons:
            self.escalations.labels(self._bounded_reason(reason)).inc()
        for decision in outcome.decisions:
            self.decisions.labels(decision.tier[:64], decision.route).inc()
        if outcome.confidence_fallback:
            self.confidence_fallbacks.labels(outcome.confidence_fallback[:64]).inc()
        for run in outcome.nodes:
            self.node_seconds.labels(run.node).observe(run.latency_ms / 1000)
            if run.model_alias is None:
                continue
            if run.input_tokens:
                self.tokens.labels(run.model_alias, "input").inc(run.input_tokens)
            if run.output_tokens:
                self.tokens.labels(run.model_alias, "output").inc(run.output_tokens)
            if run.cost_usd:
                self.cost.labels(run.model_alias).inc(run.cost_usd)
            if run.error:
                self.provider_errors.labels(run.node, run.model_alias).inc()
            elif run.endpoint:
                self.endpoint_answers.labels(run.model_alias, run.endpoint[:128]).inc()
            for warning in run.warnings:
                self.reply_warnings.labels(run.model_alias, warning[:64]).inc()

    def _bounded_reason(self, reason: str) -> str:
        """``category:<name>`` keeps only taxonomy names; other reasons come from a fixed vocabulary."""
        kind, _, value = reason.partition(":")
        if kind == "category" and value not in self._categories:
            return "category:other"
        return reason[:64]

    def render(self) -> bytes:
        return generate_latest(self.registry)
