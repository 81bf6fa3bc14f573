"""`leukoflow serve`: serving's command with monitoring's request-log writer wired in.

The composition root for the server process: serving may not import monitoring (docs/architecture.md,
import directions), so the writer is injected here.
"""

from __future__ import annotations

from collections.abc import Callable

from serving.cli import make_serve_app


def open_request_log(directory: str, store_images: bool, on_drop: Callable[[int], None]):
    """monitoring's RequestLogWriter for `directory` (never raises for an unusable folder)."""
    from monitoring.request_log import RequestLogWriter

    return RequestLogWriter(directory, store_images=store_images, on_drop=on_drop)


serve_app = make_serve_app(open_request_log)
