"""HTTP routes of the prediction page, mounted by the REST server on the REST port.

The REST server calls `handle()` for every path outside `/v1/` and `/monitoring/`, and for
`POST /v1/models/{name}[/versions/{v}|/labels/{l}]:explain`. Routes:

- `GET /` the page; `GET /ui/page.css`, `GET /ui/page.js` its files (from the package, no build step)
- `GET /ui/models/{name}[/versions/{v}|/labels/{l}]` (or `/ui/model?name=..&label=..`) which version
  answers, its classes and low-confidence threshold, whether it refers images (`referral`), the upload
  limits, and whether the server takes a pathologist's labels (`cases`, POST /v1/cases) (JSON); with neither version
  nor label, the `stable` label when the server has one, else the latest version
- `POST /v1/models/{name}[/versions/{v}|/labels/{l}]:explain` Grad-CAM for `{"instances": [{"b64": ...}]}`

Predictions themselves go through the standard `:predict`, the path hospital systems use.
Errors are TF Serving-style JSON bodies `{"error": "..."}`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from components import settings
from serving.limits import Limits

log = logging.getLogger(__name__)

Response = tuple[int, dict, bytes]

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {  # URL -> (file, content type); a fixed list, so no path ever reaches the disk unchecked
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/ui/page.css": ("page.css", "text/css; charset=utf-8"),
    "/ui/page.js": ("page.js", "text/javascript; charset=utf-8"),
}
SECURITY_HEADERS = {
    # Nothing from outside: scripts, styles and requests only to this server; images may be data:/blob:.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# Upload limits the page checks before sending; the server's own limits (manager.limits) win.
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
MAX_EXPLAIN_INSTANCES = 8
# Explanations running at once (the server's Limits.max_concurrent_explains wins): one costs about four
# predictions, so a few explain clients must not take the cores prediction traffic needs.
DEFAULT_CONCURRENT_EXPLAINS = Limits.max_concurrent_explains
DEFAULT_MAX_REQUEST_PIXELS = Limits.max_request_pixels
_SLOTS_LOCK = threading.Lock()

# /ui/model (default model, `stable` or latest) or /ui/models/{name}[/versions/{v}|/labels/{l}]
_MODEL_INFO = re.compile(
    r"^/ui/model(?:s/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+)|/labels/(?P<label>[^/]+))?)?/?$"
)
_EXPLAIN = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?:explain$"
)


def _json(status: int, payload: Any, extra: dict | None = None) -> Response:
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store", **SECURITY_HEADERS, **(extra or {})}
    return status, headers, json.dumps(payload).encode("utf-8")


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


def _limit(manager: Any, *names: str, default: int) -> int:
    """A limit from the server (manager.limits or manager attribute), else the page's default."""
    for holder in (getattr(manager, "limits", None), manager):
        for name in names:
            value = getattr(holder, name, None) if holder is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return default


def upload_limit(manager: Any) -> int:
    """Largest image file one request can carry: the server's message limit less base64 and JSON overhead."""
    message = _limit(manager, "max_message_bytes", default=0)
    return max(1, (message - 4096) * 3 // 4) if message else DEFAULT_MAX_UPLOAD_BYTES


def _status_of(exc: Exception) -> int:
    """HTTP status for an error raised by the manager, with TF Serving's mapping."""
    for attr in ("http_status", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 400 <= value < 600:
            return value
    code = getattr(exc, "code", None)
    code = getattr(code, "name", code)
    by_code = {
        "INVALID_ARGUMENT": 400,
        "NOT_FOUND": 404,
        "FAILED_PRECONDITION": 400,
        "ALREADY_EXISTS": 409,
        "RESOURCE_EXHAUSTED": 429,
        "UNIMPLEMENTED": 501,
        "UNAVAILABLE": 503,
        "DEADLINE_EXCEEDED": 504,
    }
    if isinstance(code, str) and code in by_code:
        return by_code[code]
    if isinstance(exc, (KeyError, LookupError, FileNotFoundError)):
        return 404
    if isinstance(exc, ValueError):
        return 400
    return 500


def _message(exc: Exception) -> str:
    """The exception's own message (KeyError quotes its argument; undo that)."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def _resolve(manager: Any, name: str, version: str | None, label: str | None) -> Any:
    """manager.resolve with a version string checked like TF Serving checks it."""
    if version is not None:
        try:
            number = int(version)
        except ValueError:
            raise _BadRequest(f"Invalid version: {version!r} is not an integer") from None
        return manager.resolve(name, version=number)
    return manager.resolve(name, label=label) if label else manager.resolve(name)


class _BadRequest(ValueError):
    status = 400


def _static(path: str) -> Response:
    filename, content_type = STATIC_FILES[path]
    try:
        body = (STATIC_DIR / filename).read_bytes()
    except OSError as exc:  # a broken install; say so rather than answer with a blank page
        log.error("page file missing: %s", exc)
        return 500, {"Content-Type": "text/plain; charset=utf-8"}, b"The prediction page is not installed correctly."
    headers = {"Content-Type": content_type, "Cache-Control": "no-cache", **SECURITY_HEADERS}
    return 200, headers, body


def model_info(manager: Any, name: str, version: str | None = None, label: str | None = None) -> dict:
    """What the page shows about the answering model: version, label, classes, threshold, limits."""
    from components import domain, model_metadata
    from serving.page.gradcam import preload

    used_label = label
    if version is None and label is None:
        # The page asks for `stable` by default, and falls back to the latest version
        # when the server has no labels (e.g. started with --model_name/--model_base_path).
        try:
            servable = manager.resolve(name, label="stable")
            used_label = "stable"
        except Exception:
            servable = manager.resolve(name)
    else:
        servable = _resolve(manager, name, version, label)
    meta = model_metadata.read_or_none(servable.path)
    preload(servable.path)  # the heatmap is usually asked for seconds later
    has_threshold = meta is not None and meta.low_confidence_threshold is not None
    return {
        "name": name,
        "version": int(servable.version),
        "label": used_label,
        "class_names": list(meta.class_names if meta else domain.CLASS_NAMES),
        "image_size": meta.image_size if meta else None,
        "model": meta.model if meta else None,
        "low_confidence_threshold": meta.low_confidence if meta else settings.LOW_CONFIDENCE_THRESHOLD,
        "threshold_source": "model" if has_threshold else "default",
        "max_upload_bytes": upload_limit(manager),
        "max_pixels": _limit(manager, "max_image_pixels", "max_pixels", default=DEFAULT_MAX_PIXELS),
        "explain": (Path(servable.path) / "assets.extra" / "model.keras").is_file(),
        # A calibrated export refers images (its :predict answer carries `refer`); None: an older model.
        "referral": None
        if meta is None or meta.ood_threshold is None
        else {"ood_val_referral_rate": meta.ood_val_referral_rate, "conformal_coverage": meta.conformal_coverage},
        "labels": _labels(manager, name),
        # The server takes a pathologist's label (POST /v1/cases): the page then offers Confirm / Correct.
        "cases": bool(getattr(manager, "case_capture", False)),
        "case_labels": list(domain.CLASS_NAMES),  # the labels POST /v1/cases takes
    }


def _labels(manager: Any, name: str) -> dict[str, int]:
    """The model's version labels (e.g. stable, canary), so the page can offer a choice; {} if unknown."""
    try:
        labels = manager.labels(name)
    except Exception:  # noqa: BLE001 - a manager without labels, or an unknown model
        return {}
    return {str(k): int(v) for k, v in dict(labels).items()} if labels else {}


def explain_slots(manager: Any) -> threading.BoundedSemaphore:
    """The server's explain slots (one semaphore per manager, sized by max_concurrent_explains)."""
    with _SLOTS_LOCK:
        slots = getattr(manager, "explain_slots", None)
        if slots is None:
            slots = threading.BoundedSemaphore(
                _limit(manager, "max_concurrent_explains", default=DEFAULT_CONCURRENT_EXPLAINS)
            )
            manager.explain_slots = slots
        return slots


def _decode_instances(body: bytes, max_instances: int = MAX_EXPLAIN_INSTANCES) -> tuple[list[bytes], Any]:
    """`{"instances": [{"b64": ...}, ...]}` (or `[{"images": {"b64": ...}}]`) -> image bytes."""
    try:
        payload = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest(f"JSON Parse error: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise _BadRequest('Expected a JSON object with "instances": [{"b64": "<base64 image>"}, ...]')
    instances = payload["instances"]
    if not instances:
        raise _BadRequest("No instances in the request: send at least one image")
    if len(instances) > max_instances:
        raise _BadRequest(
            f"Too many instances: {len(instances)} (at most {max_instances} per explain request; "
            "the limit is max_batch_size or the page's own)"
        )
    images = []
    for i, item in enumerate(instances):
        if isinstance(item, dict) and "b64" not in item and len(item) == 1:
            item = next(iter(item.values()))  # named input form {"images": {"b64": ...}}
        if not isinstance(item, dict) or not isinstance(item.get("b64"), str):
            raise _BadRequest(f'instance {i}: expected {{"b64": "<base64 image>"}}')
        try:
            images.append(base64.b64decode(item["b64"], validate=True))
        except (binascii.Error, ValueError):
            raise _BadRequest(f"instance {i}: the b64 value is not valid base64") from None
    return images, payload.get("class")


def explain(manager: Any, name: str, version: str | None, label: str | None, body: bytes) -> Response:
    """Grad-CAM overlays for the posted images on the resolved version."""
    from components import domain
    from serving.page import gradcam

    max_bytes = upload_limit(manager)
    max_message = _limit(manager, "max_message_bytes", default=max_bytes * 4 // 3 + 4096)
    if len(body) > max_message:
        return _error(400, f"request of {len(body)} bytes is larger than the limit max_message_bytes={max_message}")
    # The same limits as :predict, checked from the headers before any work.
    max_images = min(MAX_EXPLAIN_INSTANCES, _limit(manager, "max_batch_size", default=MAX_EXPLAIN_INSTANCES))
    max_pixels = _limit(manager, "max_image_pixels", "max_pixels", default=DEFAULT_MAX_PIXELS)
    max_request_pixels = _limit(manager, "max_request_pixels", default=DEFAULT_MAX_REQUEST_PIXELS)
    try:
        images, wanted = _decode_instances(body, max_images)
        servable = _resolve(manager, name, version, label)
        total = 0
        for i, encoded in enumerate(images):
            if len(encoded) > max_bytes:
                raise gradcam.ExplainError(
                    f"instance {i}: image of {len(encoded)} bytes is larger than the limit of {max_bytes} bytes"
                )
            try:
                total += gradcam.check_image_size(encoded, max_pixels)
            except gradcam.ExplainError as exc:
                raise gradcam.ExplainError(f"instance {i}: {exc}", exc.status) from None
        if total > max_request_pixels:
            raise gradcam.ExplainError(
                f"the {len(images)} images hold {total} pixels, more than the limit "
                f"max_request_pixels={max_request_pixels}"
            )
    except gradcam.ExplainError as exc:
        return _error(exc.status, str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a readable JSON error
        return _error(_status_of(exc), _message(exc))

    slots = explain_slots(manager)
    if not slots.acquire(blocking=False):  # bounded, apart from prediction: excess is refused, not queued
        return _error(
            429,
            "explain is busy: the server computes a limited number of explanations at once "
            "(max_concurrent_explains); retry shortly. Predictions are not affected.",
        )
    try:
        explainer = gradcam.load_explainer(servable.path)
        class_index = None
        if wanted is not None:
            class_index = domain.class_index(str(wanted)) if not isinstance(wanted, int) else wanted
        results = []
        for i, encoded in enumerate(images):
            try:
                results.append(gradcam.explain(explainer, encoded, class_index=class_index))
            except gradcam.ExplainError as exc:
                raise gradcam.ExplainError(f"instance {i}: {exc}", exc.status) from None
    except gradcam.ExplainError as exc:
        return _error(exc.status, str(exc))
    except ValueError as exc:  # an unknown class name
        return _error(400, str(exc))
    except Exception as exc:  # noqa: BLE001 - never a stack trace to the page
        log.exception("explain failed for %s version %s", name, servable.version)
        return _error(500, f"Could not compute the explanation: {type(exc).__name__}: {exc}")
    finally:
        slots.release()
    spec = {"name": name, "version": int(servable.version)}
    if label:
        spec["label"] = label
    return _json(200, {"model_spec": spec, "explanations": results})


def handle(method: str, path: str, headers: dict, body: bytes, manager: Any) -> Response | None:
    """Answer a page request, or None when the path is not the page's (the server then answers 404)."""
    parts = urlsplit(path)
    route = parts.path
    method = method.upper()

    match = _EXPLAIN.match(route)
    if match:
        if method != "POST":
            return _error(405, f"Method {method} not allowed on :explain; use POST")
        return explain(manager, match["name"], match["version"], match["label"], body)

    if route in STATIC_FILES:
        if method not in ("GET", "HEAD"):
            return _error(405, f"Method {method} not allowed on {route}")
        status, resp_headers, content = _static(route)
        return status, resp_headers, b"" if method == "HEAD" else content

    info = _MODEL_INFO.match(route)
    if info:
        if method != "GET":
            return _error(405, f"Method {method} not allowed on {route}")
        query = parse_qs(parts.query)  # /ui/model?name=..&label=.. also works where the query reaches us
        name = info["name"] or (query.get("name") or [settings.SERVED_MODEL_NAME])[0]
        version = info["version"] or (query.get("version") or [None])[0] or None
        label = info["label"] or (query.get("label") or [None])[0] or None
        try:
            return _json(200, model_info(manager, name, version, label))
        except Exception as exc:  # noqa: BLE001 - the page shows the message
            return _error(_status_of(exc), _message(exc))

    if route == "/favicon.ico":
        return 204, {"Cache-Control": "max-age=86400"}, b""
    return None
