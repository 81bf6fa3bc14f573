"""`POST /v1/cases`: a pathologist's label for one image, stored through the case store `leukoflow cases add` uses.

The request is JSON, in TF Serving's convention for bytes:

    {"image": {"b64": "..."}, "label": "Pre", "site": "lab-b", "reviewer": "dr-a",
     "request_id": "<X-Request-Id of the :predict answer>", "filename": "smear-17.jpg"}

`request_id` and `filename` are optional. With `request_id` and no `image`, the image is the kept referral
of that request (the server must run with --keep_referred_images). The image passes the limits :predict
applies (format and pixels from its header, and the body size in the transport), then the case store's
validation, dedup, conflict and quarantine, exactly as a file given to `leukoflow cases add`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import domain
from serving.errors import internal, invalid_argument, not_found
from serving.limits import Limits, check_images

log = logging.getLogger(__name__)

FIELDS = ("image", "label", "site", "reviewer", "request_id", "filename")
MAX_TEXT = 200  # reviewer, request id, file name: one line of printable text
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")
# The store's outcome keys -> the one word the answer gives.
OUTCOMES = (
    ("added", "added"),
    ("already", "already_a_case"),
    ("duplicates", "duplicate"),
    ("conflicts", "conflict"),
    ("quarantined", "quarantined"),
)
OFF_MESSAGE = (
    "case capture is off on this server: start it with --cases_dir DIR to accept a pathologist's labels "
    "at POST /v1/cases"
)


@dataclass
class CaseIntakeOptions:
    """Where cases go and what they are deduplicated against (the server's --cases_* flags)."""

    cases_dir: str
    base_data_dir: str | None = None  # None: the repository's data/ folder
    base_manifest: str | None = None  # a validate manifest.csv or dedup kept.csv instead of hashing the data
    kept_dir: str | None = None  # the --keep_referred_images folder, to label a kept referral by its request id


class CaseIntake:
    """Adds one labelled image per request to the cases folder (the case store serialises writers)."""

    def __init__(self, options: CaseIntakeOptions) -> None:
        from components.cases import store

        self.options = options
        self.cases_dir = Path(options.cases_dir)
        self._base = None
        self._base_lock = threading.Lock()
        # Refuse to start without the base data: every case is deduplicated against it.
        if options.base_manifest is None:
            from components.home import default_data_dir

            data = Path(options.base_data_dir or default_data_dir())
            if not data.is_dir():
                raise FileNotFoundError(
                    f"--cases_dir needs the base data to deduplicate cases against: {data} is not a folder "
                    "(run `dvc pull`, or give --cases_base_data DIR or --cases_base_manifest FILE)"
                )
        elif not Path(options.base_manifest).is_file():
            raise FileNotFoundError(f"--cases_base_manifest: no such file {options.base_manifest}")
        self.cases_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # patient images: private when new
        store.read_ledger(self.cases_dir)  # a ledger of another version is refused at start, not per request
        # Hashing the base data takes a while the first time (cached afterwards): done off the start path.
        threading.Thread(target=self._warm_base_index, name="cases-base-index", daemon=True).start()

    def _warm_base_index(self) -> None:
        try:
            self.base_index()
        except Exception as exc:  # noqa: BLE001 - each POST /v1/cases retries and answers the error
            log.warning("cannot index the base data for case dedup yet: %s", exc)

    def base_index(self):
        """The base data's hashes, computed once per server (the first request waits for it if needed)."""
        from components.cases import store

        with self._base_lock:
            if self._base is None:
                data = self.options.base_data_dir
                manifest = self.options.base_manifest
                self._base = store.base_index(Path(data) if data else None, Path(manifest) if manifest else None)
            return self._base

    def add(self, body: bytes, limits: Limits) -> dict:
        """One JSON request -> the case store's outcome for its image (ServingError for a bad request)."""
        from components.cases import referred, store

        request = parse_case_request(body)
        label = request["label"]
        site = request["site"]
        reviewer = request["reviewer"]
        request_id = request.get("request_id", "")
        with tempfile.TemporaryDirectory(prefix="case-upload-") as tmp:
            if "image" in request:
                image = request["image"]
                check_images("image", [image], limits)  # :predict's format and pixel limits
                name = request.get("filename") or f"{request_id or 'upload'}"
                path = Path(tmp) / f"{Path(name).stem[:100] or 'upload'}{referred.image_suffix(image)}"
                path.write_bytes(image)
            else:
                path = self._kept_referral(request_id)
            candidate = store.Candidate(path, label, site, reviewer, source_request_id=request_id)
            result = store.add_cases([candidate], self.cases_dir, self.base_index())
        return case_answer(result, candidate)

    def _kept_referral(self, request_id: str) -> Path:
        from components.cases import referred

        if not request_id:
            raise invalid_argument('"image" is required: {"image": {"b64": "<base64 image>"}, ...}')
        if not self.options.kept_dir:
            raise invalid_argument(
                '"image" is required: this server keeps no referred images (--keep_referred_images), '
                f"so request id {request_id!r} names no image here"
            )
        try:
            return Path(referred.ReferredImages(self.options.kept_dir).find(request_id)["path"])
        except KeyError as exc:
            raise not_found(str(exc.args[0])) from None


def _text(request: dict, name: str, required: bool) -> str:
    value = request.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise invalid_argument(f'"{name}" must be a string, got {type(value).__name__}')
    value = value.strip()
    if required and not value:
        raise invalid_argument(f'"{name}" is required')
    if len(value) > MAX_TEXT or not _PRINTABLE.match(value):
        raise invalid_argument(f'"{name}" must be one line of at most {MAX_TEXT} printable characters')
    return value


def parse_case_request(body: bytes) -> dict[str, Any]:
    """The checked fields of a POST /v1/cases body; INVALID_ARGUMENT naming the first bad field."""
    import json

    from components.cases import store

    try:
        request = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise invalid_argument(f"JSON Parse error: {exc}") from None
    if not isinstance(request, dict):
        raise invalid_argument(
            'Expected a JSON object: {"image": {"b64": ...}, "label": ..., "site": ..., "reviewer": ...}'
        )
    unknown = sorted(set(request) - set(FIELDS))
    if unknown:
        raise invalid_argument(f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(FIELDS)}")
    out: dict[str, Any] = {}
    label = _text(request, "label", required=True)
    try:
        out["label"] = domain.canonical_class(label)
    except ValueError:
        raise invalid_argument(
            f'"label": unknown class {label!r}; use one of {", ".join(domain.CLASS_NAMES)}'
        ) from None
    try:
        out["site"] = store.check_site(_text(request, "site", required=True))
    except ValueError as exc:
        raise invalid_argument(f'"site": {exc}') from None
    out["reviewer"] = _text(request, "reviewer", required=True)
    out["request_id"] = _text(request, "request_id", required=False)
    out["filename"] = Path(_text(request, "filename", required=False).replace("\\", "/")).name
    if "image" in request:
        image = request["image"]
        if not isinstance(image, dict) or set(image) != {"b64"} or not isinstance(image["b64"], str):
            raise invalid_argument('"image" must be {"b64": "<base64 image>"}')
        try:
            out["image"] = base64.b64decode(image["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid_argument('"image": the b64 value is not valid base64') from None
    elif not out["request_id"]:
        raise invalid_argument('"image" is required: {"image": {"b64": "<base64 image>"}, ...}')
    return out


def case_answer(result: dict, candidate: Any) -> dict:
    """The store's batch result for one image -> {"outcome": ..., the case's fields, and why}."""
    outcome, detail = next(((word, result[key][0]) for key, word in OUTCOMES if result[key]), (None, {}))
    if outcome is None:  # the store accounts for every file it is given
        raise internal("the case store reported no outcome")
    answer = {
        "outcome": outcome,
        "label": candidate.label,
        "site": candidate.site,
        "reviewer": candidate.reviewer,
        "request_id": candidate.source_request_id or None,
        "cases": result["cases"],
    }
    if outcome == "added":
        answer["sha256"] = detail["sha256"]
    elif outcome in ("already_a_case", "duplicate"):
        answer["of"] = detail["of"]
        answer["kind"] = detail["kind"]
    elif outcome == "conflict":
        answer["with"] = detail["with"]
        answer["message"] = f"conflict: labelled {candidate.label} here but {detail['with']}; kept out of training"
    else:
        answer["reason"] = detail["reason"]
        answer["message"] = f"quarantined: {detail['reason']}"
    return answer
