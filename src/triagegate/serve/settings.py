"""What an operator can tune about the HTTP service, in one immutable object."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Settings of one app instance; every limit is enforced before a model is called.

    ``api_keys`` empty means no authentication (the CLI only allows that on loopback or
    with ``--insecure``). ``rate_limit`` is requests per second per API key (per client
    address without keys), refilled continuously up to ``rate_burst``; 0 turns it off.
    ``max_image_bytes`` ``None`` uses the graph's ``limits.max_image_bytes``.
    ``/metrics`` is open only when the service has no keys at all; with ``metrics_token``
    it takes that bearer token (and no API key), otherwise any API key.
    """

    api_keys: tuple[str, ...] = ()
    metrics_token: str | None = None
    """A separate bearer token for ``/metrics``, so a scraper holds no key that can run tickets."""
    max_body_bytes: int = 10 * 1024 * 1024
    max_image_bytes: int | None = None
    max_batch: int = 32
    batch_concurrency: int = 8
    rate_limit: float = 50.0
    rate_burst: int = 100
    cors_origins: tuple[str, ...] = ()
    ready_timeout: float = 2.0
    close_pipeline: bool = True
    """Close the pipeline's backends when the app shuts down (the app owns it)."""
    store: str | None = None
    """The outcome store each Outcome (and each shadow verdict) is written to; None: none."""
    report_window_s: float = 86_400.0
    """The window of the store's figures ``/metrics`` exports (``triagegate report --since``)."""
    report_refresh_s: float = 30.0
    """How long ``/metrics`` reuses the store's figures before reading it again."""

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self.batch_concurrency < 1:
            raise ValueError("batch_concurrency must be at least 1")
        if self.rate_limit < 0 or self.rate_burst < 1:
            raise ValueError("rate_limit must be >= 0 and rate_burst >= 1")
        if self.metrics_token is not None and len(self.metrics_token) < 16:
            raise ValueError("the metrics token must be at least 16 characters")
        if self.max_image_bytes is not None and self.max_image_bytes < 1:
            raise ValueError("max_image_bytes must be at least 1")
