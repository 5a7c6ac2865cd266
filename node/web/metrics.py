"""``/metrics``: Prometheus text format, computed from the ledger (and the broker) on each scrape.

The ledger is the node's record of everything it did, shared by the listener, workers and this process, so a
collector that reads it on each scrape gives the same numbers whichever process is scraped and survives
restarts; no counter lives in process memory. Stage durations come from the jobs' result summaries
(:mod:`node.web.results`, read once per job). See ``docs/dashboard.md`` for the metric list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError

from node.errors import NodeError
from node.jobs.broker import BrokerConfig, queue_depth
from node.ledger.db import Ledger
from node.ledger.states import DeliveryState, JobState, StudyState
from node.ledger.views import LedgerCounts, ledger_counts
from node.web.results import ResultReader

logger = logging.getLogger(__name__)

#: queued -> finished job durations (seconds): a study takes about a minute, a slow one ten.
JOB_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


@dataclass(eq=False)  # hashable by identity: the registry keys collectors by object
class NodeCollector(Collector):
    ledger: Ledger
    results: ResultReader
    broker: BrokerConfig
    queue: str
    depth: Callable[[BrokerConfig, str], int] = queue_depth
    #: break ``ainode_instances_received`` down by calling AE title (only for a scrape that sent the token: the
    #: titles are the allow-list's values, which an open endpoint must not give away)
    per_peer: bool = False

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ainode_ledger_up", "1 when the ledger database answered this scrape")
        try:
            counts = ledger_counts(self.ledger)
        except SQLAlchemyError as exc:
            logger.warning("metrics: the ledger cannot be read: %s", exc)
            up.add_metric([], 0)
            yield up
        else:
            up.add_metric([], 1)
            yield up
            yield from self._ledger_metrics(counts)
        yield from self._queue_metrics()

    def _ledger_metrics(self, counts: LedgerCounts) -> Iterator[Metric]:
        if self.per_peer:
            received = CounterMetricFamily("ainode_instances_received", "DICOM instances stored in the spool",
                                           labels=["calling_ae_title"])
            for ae, n in sorted(counts.instances_by_ae.items()):
                received.add_metric([ae], n)
        else:
            received = CounterMetricFamily("ainode_instances_received", "DICOM instances stored in the spool")
            received.add_metric([], sum(counts.instances_by_ae.values()))
        yield received
        yield _by_state("ainode_studies", "Studies in the ledger by state", StudyState, counts.studies_by_state)
        yield _by_state("ainode_jobs", "Processing jobs by state", JobState, counts.jobs_by_state)
        yield _by_state("ainode_deliveries", "Result deliveries by state (failed = dead letters awaiting resend)",
                        DeliveryState, counts.deliveries_by_state)
        failures = CounterMetricFamily("ainode_delivery_failures", "Failed delivery attempts",
                                       labels=["outcome"])
        failures.add_metric(["retry"], counts.audit_counts.get("delivery-retry", 0))
        failures.add_metric(["dead-letter"], counts.audit_counts.get("delivery-dead-letter", 0))
        yield failures
        logins = CounterMetricFamily("ainode_web_login_failures", "Rejected dashboard/API logins")
        logins.add_metric([], counts.audit_counts.get("web-login-failed", 0))
        yield logins
        yield self._job_histogram(counts.finished_jobs)
        yield self._stage_summary(counts.finished_jobs)

    @staticmethod
    def _job_histogram(finished: list[tuple[str, int, str, float]]) -> HistogramMetricFamily:
        histogram = HistogramMetricFamily("ainode_job_duration_seconds",
                                          "Jobs from queued to done/failed (ledger times)", labels=["state"])
        for state in (JobState.DONE.value, JobState.FAILED.value):
            durations = [d for _, _, s, d in finished if s == state]
            buckets = [(repr(float(b)), sum(1 for d in durations if d <= b)) for b in JOB_BUCKETS]
            buckets.append(("+Inf", len(durations)))
            histogram.add_metric([state], buckets, sum(durations))
        return histogram

    def _stage_summary(self, finished: list[tuple[str, int, str, float]]) -> SummaryMetricFamily:
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for uid, job_id, state, _ in finished:
            if state != JobState.DONE.value:
                continue
            result = self.results.read(uid, job_id)
            if result is None:
                continue
            for stage, seconds in result.timings_s.items():
                sums[stage] = sums.get(stage, 0.0) + seconds
                counts[stage] = counts.get(stage, 0) + 1
        summary = SummaryMetricFamily("ainode_stage_duration_seconds",
                                      "Processing stages of done jobs (from their result summaries)",
                                      labels=["stage"])
        for stage in sorted(sums):
            summary.add_metric([stage], counts[stage], sums[stage])
        return summary

    def _queue_metrics(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ainode_broker_up", "1 when the broker's queue could be read this scrape")
        depth = GaugeMetricFamily("ainode_queue_depth", "Task messages waiting in the broker queue",
                                  labels=["queue"])
        try:
            waiting = self.depth(self.broker, self.queue)
        except NodeError as exc:
            logger.warning("metrics: queue depth unavailable: %s", exc.message)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        depth.add_metric([self.queue], waiting)
        yield up
        yield depth


def _by_state(name: str, documentation: str, states: type[StudyState] | type[JobState] | type[DeliveryState],
              counts: dict[str, int]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["state"])
    for state in states:
        gauge.add_metric([state.value], counts.get(state.value, 0))
    return gauge


def registry(collector: NodeCollector) -> CollectorRegistry:
    """A registry of its own (no process/platform collectors of the default one)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg
