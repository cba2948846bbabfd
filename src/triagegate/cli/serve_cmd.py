"""``triagegate serve GRAPH``: the HTTP service (needs the ``serve`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from triagegate.cli import app
from triagegate.cli.common import GraphArg, LogLevelOpt, StoreOpt, setup_logging


@app.command()
def serve(
    graph: GraphArg,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback needs API keys or --insecure.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Port to bind (0 picks a free one; the READY line says which).")
    ] = 8080,
    api_keys_file: Annotated[
        Path | None,
        typer.Option(
            "--api-keys-file", help="File of bearer API keys, one per line (added to TRIAGEGATE_API_KEYS)."
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback bind without API keys.")
    ] = False,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option("--cors-origin", help="Allow browser calls from this origin; repeatable."),
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted (413 above).")] = 10
    * 1024
    * 1024,
    max_image_bytes: Annotated[
        int | None,
        typer.Option(help="Largest image accepted (413 above); default: the graph's limits.max_image_bytes."),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Most tickets in one POST /v1/tickets:batch.")] = 32,
    batch_concurrency: Annotated[int, typer.Option(help="Tickets of one batch run at once.")] = 8,
    rate_limit: Annotated[float, typer.Option(help="Requests per second per API key (0: no limit).")] = 50.0,
    rate_burst: Annotated[
        int, typer.Option(help="Requests a key may send at once before the rate applies.")
    ] = 100,
    shutdown_timeout: Annotated[
        float, typer.Option(help="On SIGTERM, seconds to let in-flight requests finish before closing them.")
    ] = 30.0,
    store: StoreOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Serve GRAPH over HTTP: POST /v1/tickets, POST /v1/tickets:batch, /healthz, /readyz, /metrics.

    /v1/ routes need an API key when keys are configured; /metrics needs
    TRIAGEGATE_METRICS_TOKEN when it is set, else an API key when there are keys.

    Prints 'READY http://HOST:PORT' on stdout once it accepts connections. SIGTERM stops
    accepting, lets in-flight requests finish (up to --shutdown-timeout) and exits 0. A port
    already in use is one line on stderr and exit code 1, before the graph is loaded.
    """
    import os

    from triagegate import environment
    from triagegate.errors import ConfigError
    from triagegate.log import register_secret
    from triagegate.serve.auth import is_loopback, load_keys, load_metrics_token

    setup_logging(log_level)
    try:
        from triagegate.serve.runner import run_server
        from triagegate.serve.settings import ServeSettings
    except ImportError as exc:
        raise ConfigError(
            f"the HTTP service needs the 'serve' extra ({exc}); pip install 'triagegate[serve]'"
        ) from None
    keys = load_keys(os.environ, api_keys_file)
    metrics_token = load_metrics_token(os.environ)
    for key in (*keys, *([metrics_token] if metrics_token else [])):
        register_secret(key)
    if not keys and not is_loopback(host) and not insecure:
        raise ConfigError(
            f"refusing to serve on {host} without API keys: set {environment.API_KEYS} or --api-keys-file, "
            "bind 127.0.0.1, or pass --insecure if something else authenticates callers"
        )
    try:
        settings = ServeSettings(
            api_keys=keys,
            metrics_token=metrics_token,
            max_body_bytes=max_body_bytes,
            max_image_bytes=max_image_bytes,
            max_batch=max_batch,
            batch_concurrency=batch_concurrency,
            rate_limit=rate_limit,
            rate_burst=rate_burst,
            cors_origins=tuple(cors_origin or ()),
            store=store,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_server(graph, settings, host=host, port=port, shutdown_timeout=shutdown_timeout)
