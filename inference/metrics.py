"""``/metrics`` of ``bitnet serve``: Prometheus text format through the standard ``prometheus_client``.

The names follow vLLM's (``vllm:`` -> ``bitnet:``), which llama-server's operators map easily:
``bitnet:num_requests_running`` / ``bitnet:num_requests_waiting`` (llama-server's
``requests_processing`` / ``requests_deferred``), ``bitnet:prompt_tokens_total``,
``bitnet:generation_tokens_total`` (``tokens_predicted_total``), ``bitnet:time_to_first_token_seconds``,
``bitnet:inter_token_latency_seconds``, ``bitnet:e2e_request_latency_seconds``,
``bitnet:request_success_total{finished_reason}``, plus ``bitnet:http_requests_total{endpoint,status}``
and ``bitnet:engine_step_seconds``. Each app gets its own registry (several servers in one process).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from .scheduler import Request, Scheduler, SchedulerObserver

__all__ = ["ServeMetrics", "CONTENT_TYPE_LATEST"]

# vLLM's buckets (seconds): TTFT from 1 ms to 160 s, inter-token from 10 ms to 80 s (finer at the low end here:
# a small model's inter-token latency is a few ms).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0, 7680.0)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServeMetrics(SchedulerObserver):
    """The server's metrics; the scheduler calls the :class:`SchedulerObserver` hooks on its thread."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._labels = {"model_name": model_name}

        def one(kind, name: str, doc: str, **kw):  # a metric with the model_name label, bound to it
            return kind(name, doc, labelnames=list(self._labels), registry=self.registry, **kw).labels(**self._labels)

        self.running = one(Gauge, "bitnet:num_requests_running", "Requests in a slot (busy slots).")
        self.waiting = one(Gauge, "bitnet:num_requests_waiting", "Requests queued for a slot.")
        self.slots = one(Gauge, "bitnet:num_slots", "Sequence slots (--parallel).")
        self.prompt_tokens = one(Counter, "bitnet:prompt_tokens", "Prompt tokens of requests that got a token.")
        self.cached_tokens = one(Counter, "bitnet:prompt_tokens_cached", "Prompt tokens taken from a slot's cache.")
        self.generation_tokens = one(Counter, "bitnet:generation_tokens", "Generated tokens.")
        self.ttft = one(Histogram, "bitnet:time_to_first_token_seconds", "Arrival to first token.",
                        buckets=TTFT_BUCKETS)
        self.itl = one(Histogram, "bitnet:inter_token_latency_seconds", "Time between a request's consecutive "
                       "tokens.", buckets=ITL_BUCKETS)
        self.e2e = one(Histogram, "bitnet:e2e_request_latency_seconds", "Arrival to last token.",
                       buckets=E2E_BUCKETS)
        self.step = one(Histogram, "bitnet:engine_step_seconds", "One batched engine step.", buckets=STEP_BUCKETS)
        self.finished = Counter("bitnet:request_success", "Requests finished, by finish reason.",
                                labelnames=[*self._labels, "finished_reason"], registry=self.registry)
        self.http = Counter("bitnet:http_requests", "HTTP requests answered, by endpoint and status.",
                            labelnames=["endpoint", "status"], registry=self.registry)

    def watch(self, scheduler: Scheduler) -> None:
        """Read the queue depth and busy slots from ``scheduler`` at each scrape."""
        self.running.set_function(lambda: scheduler.status()["slots_busy"])
        self.waiting.set_function(lambda: scheduler.status()["queued"])
        self.slots.set(scheduler.parallel)

    # SchedulerObserver (engine thread)
    def on_step(self, seconds: float, segments: int, tokens: int) -> None:
        self.step.observe(seconds)

    def on_token(self, request: Request, seconds_since_last: float, first: bool) -> None:
        self.generation_tokens.inc()
        if first:
            self.ttft.observe(seconds_since_last)
            self.prompt_tokens.inc(len(request.prompt_ids))
            self.cached_tokens.inc(request.cached_tokens)
        else:
            self.itl.observe(seconds_since_last)

    def on_finish(self, request: Request) -> None:
        self.finished.labels(**self._labels, finished_reason=request.status.value).inc()
        if request.first_token_time is not None and request.last_token_time is not None:
            self.e2e.observe(request.last_token_time - request.arrival_time)

    def render(self) -> bytes:
        return generate_latest(self.registry)
