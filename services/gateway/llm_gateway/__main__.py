"""`python -m llm_gateway`: the gateway server. Every setting comes from GATEWAY_* variables.

This (parent) process:
1. prepares a fresh prometheus-client multiprocess directory (PROMETHEUS_MULTIPROC_DIR)
   before anything imports prometheus_client, so every worker writes its metrics there;
2. serves /metrics on GATEWAY_METRICS_PORT from a thread, aggregating all workers;
3. runs uvicorn (uvloop + httptools) with GATEWAY_WORKERS worker processes sharing the API
   port. SIGTERM stops accepting connections, drains in-flight requests for up to
   GATEWAY_SHUTDOWN_GRACE_SECONDS, then each worker flushes its usage records and exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

from .logging_setup import setup_logging, stop_logging
from .settings import Settings

log = logging.getLogger("llm_gateway")


def _fresh_multiproc_dir() -> tuple[str, bool]:
    """An empty directory for this run's metric files (stale files would replay old counts);
    and whether we created it (then it is removed at exit)."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        os.makedirs(configured, exist_ok=True)
        for name in os.listdir(configured):
            if name.endswith(".db"):
                os.remove(os.path.join(configured, name))
        return configured, False
    path = tempfile.mkdtemp(prefix="llm-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path, True


def main() -> int:
    settings = Settings()
    setup_logging(settings.log_level)
    metrics_dir, created = _fresh_multiproc_dir()

    # Imported only now: prometheus_client reads PROMETHEUS_MULTIPROC_DIR at import.
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from .metrics_server import start_metrics_server

    config = uvicorn.Config(
        "llm_gateway.app:create_app", factory=True,
        host=settings.host, port=settings.port, workers=settings.workers,
        loop="uvloop", http="httptools", lifespan="on",
        log_config=None, access_log=False, server_header=False,
        # The gateway never uses client addresses: skip uvicorn's X-Forwarded-* rewriting per request.
        proxy_headers=False,
        # uvicorn annotates an int, but waits with asyncio.wait_for, which takes the float as it is.
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,  # type: ignore[arg-type]
        # Longer than the edge proxy's idle timeout, so the edge never reuses a connection we just closed.
        timeout_keep_alive=120, backlog=4096,
    )
    metrics_server = start_metrics_server(settings.host, settings.metrics_port, metrics_dir)
    log.info("gateway starting", extra={"port": settings.port, "metrics_port": settings.metrics_port,
                                        "workers": settings.workers, "engines": settings.engines})
    # Always the supervisor, even for one worker: the parent then only supervises and serves
    # metrics, and exits normally (status 0) after the workers drained on SIGTERM.
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    try:
        supervisor.run()
    finally:
        metrics_server.shutdown()
        if created:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        log.info("gateway stopped")
        stop_logging()
    if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        return STARTUP_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
