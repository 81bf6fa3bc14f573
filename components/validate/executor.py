"""Validate the raw images: find them, inspect every file, quarantine the unreadable, run a GE suite.

Outputs in `out_dir`: `manifest.csv` (one row per file found), `quarantine.csv`,
`validation.json`, and `data_docs/` (Great Expectations Data Docs HTML).
Only rows with `status == "ok"` go downstream.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from components import atomic_files, domain, settings
from components.validate.parallel import parallel_map

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "path",
    "rel_path",
    "label",
    "sha256",
    "width",
    "height",
    "mode",
    "format",
    "bytes",
    "channels",
    "mean_brightness",
    "pixel_std",
    "phash",
    "status",
    "reason",
]
VARIANTS = ("original", "segmented")
# A broken download (many unreadable files) is critical; a few bad files are quarantined.
MIN_DECODABLE_FRACTION = 0.9


class DataNotFoundError(FileNotFoundError):
    """No class folders (hence no data) where the data was expected."""


class ValidationFailed(RuntimeError):
    """A critical expectation failed; the message names each one."""


def folder_class(name: str) -> str | None:
    """The class a folder name stands for, case-insensitively, or None.

    Accepts the canonical names (`benign`, `EARLY`) and the public download's
    names (`[Malignant] early Pre-B`, `[Malignant] Pre-B`, `[Malignant] Pro-B`).
    """
    lowered = name.strip().lower()
    for cls in domain.CLASS_NAMES:
        if lowered == cls.lower():
            return cls
    letters = re.sub(r"[^a-z]", "", re.sub(r"\[[^\]]*\]", "", lowered))
    aliases = {"benign": "Benign", "earlypreb": "Early", "earlyb": "Early", "preb": "Pre", "prob": "Pro"}
    return aliases.get(letters)


def _variant_of(parts: tuple[str, ...]) -> str | None:
    for part in parts:
        if part.lower() in VARIANTS:
            return part.lower()
    return None


@dataclass
class Discovery:
    files: list[tuple[Path, str]]  # (file, label) for every file under a class folder, chosen variant
    variants_found: list[str]
    variant_used: str | None
    skipped_other_variant: int  # files of the variant not chosen (never double counted)
    outside_class_folders: int  # files under data_dir but under no class folder


def discover(data_dir: str | Path, variant: str = "original") -> Discovery:
    """Every file under a class folder (any depth, case-insensitive); one variant if there are two."""
    root = Path(data_dir)
    hint = (
        f"get the data with `dvc pull` (fills {settings_data_dir()}), or point --data-dir at a folder "
        f"holding class folders {', '.join(domain.CLASS_NAMES)} (at any depth)"
    )
    if not root.is_dir():
        raise DataNotFoundError(f"data directory {root} does not exist; {hint}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")

    labelled: list[tuple[Path, str, str | None]] = []
    outside = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_parts = Path(dirpath).relative_to(root).parts
        # The nearest enclosing class folder names the label.
        label = next((c for c in (folder_class(p) for p in reversed(rel_parts)) if c), None)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if label is None:
                outside += 1
                continue
            labelled.append((Path(dirpath) / name, label, _variant_of(rel_parts)))
    if not labelled:
        raise DataNotFoundError(f"no class folders with files under {root}; {hint}")

    found = sorted({v for _, _, v in labelled if v})
    used: str | None = None
    skipped = 0
    if found:
        if variant not in found:
            raise DataNotFoundError(
                f"{root} holds {', '.join(found)} copies but no {variant!r} variant; "
                f"choose one with --variant {found[0]}"
            )
        used = variant
        kept = [(p, lab) for p, lab, v in labelled if v in (None, variant)]
        skipped = len(labelled) - len(kept)
    else:
        kept = [(p, lab) for p, lab, _ in labelled]
    return Discovery(kept, found, used, skipped, outside)


def settings_data_dir() -> str:
    from components.home import default_data_dir

    return str(default_data_dir())


def inspect_file(item: tuple[str, str, str]) -> dict:
    """One manifest row: hashes, geometry, decodability; never raises for a bad file."""
    from PIL import Image, ImageStat

    from components.host_features import mean_brightness
    from components.perceptual_hash import phash_rgb

    path, rel_path, label = item
    row = {c: None for c in MANIFEST_COLUMNS}
    row.update(path=path, rel_path=rel_path, label=label, status="ok", reason="")
    try:
        data = Path(path).read_bytes()
        row["bytes"] = len(data)
        row["sha256"] = hashlib.sha256(data).hexdigest()
        if Path(path).suffix.lower() not in domain.IMAGE_SUFFIXES:
            raise domain.ImageDecodeError(f"not an image file suffix ({Path(path).suffix or 'none'})")
        with Image.open(io.BytesIO(data)) as img:
            row.update(width=img.width, height=img.height, mode=img.mode, format=img.format)
        rgb = domain.load_rgb(data)
        row["channels"] = int(rgb.shape[2]) if rgb.ndim == 3 else 1
        row["mean_brightness"] = round(mean_brightness(rgb), 4)
        pil = Image.fromarray(rgb)
        # Blank = no spatial variation in any channel (a uniform colour is blank too); from histograms, fast.
        row["pixel_std"] = round(max(ImageStat.Stat(pil).stddev), 4)
        row["phash"] = phash_rgb(pil)  # dedup's hash, while the image is decoded anyway
    except Exception as exc:  # noqa: BLE001 - any unreadable file is quarantined, never a crash
        row.update(status="quarantined", reason=f"{type(exc).__name__}: {exc}"[:300])
        for key in ("width", "height", "mode", "format", "channels", "mean_brightness", "pixel_std", "phash"):
            row[key] = None
    return row


def build_manifest(data_dir: str | Path, variant: str = "original", workers: int | None = None):
    """The manifest DataFrame (one row per file found) and the discovery facts."""
    import pandas as pd

    found = discover(data_dir, variant)
    root = Path(data_dir)
    items = [(str(p.resolve()), str(p.relative_to(root)), label) for p, label in found.files]
    rows = parallel_map(inspect_file, items, workers)
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in ("width", "height", "bytes", "channels"):
        frame[col] = frame[col].astype("Int64")
    return frame, found


# (name, critical, build(gxe, min_per_class)) for the per-image suite; names are what failures report.
def _image_expectations(gxe, decodable_fraction: float) -> list:
    return [
        (
            "decodable",
            True,
            gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["ok"], mostly=decodable_fraction),
        ),
        ("three_channels_after_conversion", True, gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[3])),
        (
            "label_in_class_set",
            True,
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(domain.CLASS_NAMES)),
        ),
        (
            "width_in_range",
            False,
            gxe.ExpectColumnValuesToBeBetween(column="width", min_value=settings.MIN_SIDE, max_value=settings.MAX_SIDE),
        ),
        (
            "height_in_range",
            False,
            gxe.ExpectColumnValuesToBeBetween(
                column="height", min_value=settings.MIN_SIDE, max_value=settings.MAX_SIDE
            ),
        ),
        ("not_blank", False, gxe.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=settings.BLANK_STD_MAX)),
        (
            "not_saturated",
            False,
            gxe.ExpectColumnValuesToBeBetween(column="mean_brightness", max_value=settings.SATURATED_MEAN_MIN),
        ),
    ]


def _class_expectations(gxe, min_per_class: int) -> list:
    return [
        ("per_class_minimum_count", True, gxe.ExpectColumnValuesToBeBetween(column="count", min_value=min_per_class)),
        (
            "all_classes_present",
            True,
            gxe.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=list(domain.CLASS_NAMES)),
        ),
    ]


def run_expectations(
    manifest,
    docs_dir: Path,
    min_per_class: int,
    decodable_fraction: float,
    class_counts: bool = True,
    result_format: str = "SUMMARY",
) -> list[dict]:
    """Run the GE suites (per image, per class) in an ephemeral context; build Data Docs into docs_dir.

    Without `class_counts` only the per-image suite runs (a batch of cases need not hold every class).
    With result_format "COMPLETE" each outcome lists the manifest's index of every failing row
    (`unexpected_index_list`), so a caller can act on single images.
    """
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter buries our summary
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(
        site_name="leukoflow",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    ok = manifest[manifest["status"] == "ok"]
    counts = pd.DataFrame(
        {
            "label": list(domain.CLASS_NAMES),
            "count": [int((ok["label"] == c).sum()) for c in domain.CLASS_NAMES],
        }
    )
    source = context.data_sources.add_pandas("leukoflow")
    plan = [
        ("images", manifest, _image_expectations(gxe, decodable_fraction)),
        ("class_counts", counts, _class_expectations(gxe, min_per_class)),
    ][: 2 if class_counts else 1]
    outcomes: list[dict] = []
    for asset_name, frame, expectations in plan:
        batch = source.add_dataframe_asset(asset_name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"leukoflow_{asset_name}"))
        for name, critical, expectation in expectations:
            expectation.meta = {"name": name, "critical": critical}
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{asset_name}", data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"checkpoint_{asset_name}",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["leukoflow"])],
                result_format=result_format,
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        for run in result.run_results.values():
            for item in run.results:
                meta = item.expectation_config.meta or {}
                outcomes.append(
                    {
                        "name": meta.get("name", item.expectation_config.type),
                        "critical": bool(meta.get("critical")),
                        "success": bool(item.success),
                        "expectation": item.expectation_config.type,
                        "unexpected_count": (item.result or {}).get("unexpected_count"),
                        "unexpected_values": [
                            str(v) for v in ((item.result or {}).get("partial_unexpected_list") or [])[:10]
                        ],
                        "unexpected_index_list": list((item.result or {}).get("unexpected_index_list") or []),
                    }
                )
    return outcomes


def run_validate(
    data_dir: str | Path,
    out_dir: str | Path,
    variant: str = "original",
    min_per_class: int = settings.MIN_IMAGES_PER_CLASS,
    decodable_fraction: float = MIN_DECODABLE_FRACTION,
    workers: int | None = None,
    raise_on_failure: bool = False,
) -> dict:
    """Build the manifest, quarantine unreadable files, run the GE suite; return the result dict.

    `success` is False only when a critical expectation fails; with
    `raise_on_failure` that raises ValidationFailed naming each failed expectation.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest, found = build_manifest(data_dir, variant, workers)
    atomic_files.write_csv(out / "manifest.csv", manifest)
    quarantine = manifest[manifest["status"] != "ok"]
    atomic_files.write_csv(out / "quarantine.csv", quarantine[["path", "rel_path", "label", "reason"]])
    for _, row in quarantine.iterrows():
        log.warning("quarantined %s: %s", row["rel_path"], row["reason"])

    # Data Docs are built next to their final place and swapped in whole.
    docs_tmp = out / ".data_docs.tmp"
    shutil.rmtree(docs_tmp, ignore_errors=True)
    outcomes = run_expectations(manifest, docs_tmp, min_per_class, decodable_fraction)
    docs = out / "data_docs"
    shutil.rmtree(docs, ignore_errors=True)
    docs_tmp.replace(docs)

    ok = manifest[manifest["status"] == "ok"]
    per_class = {c: int((ok["label"] == c).sum()) for c in domain.CLASS_NAMES}
    for o in outcomes:  # say which classes, not just which counts
        if o["name"] == "per_class_minimum_count" and not o["success"]:
            o["detail"] = (
                ", ".join(f"{c} has {n}" for c, n in per_class.items() if n < min_per_class)
                + f" valid images (minimum {min_per_class})"
            )
    failed = [o["name"] for o in outcomes if o["critical"] and not o["success"]]
    result = {
        "success": not failed,
        "images": int(len(manifest)),
        "valid": int(len(ok)),
        "quarantined": quarantine["path"].tolist(),
        "failed_expectations": failed,
        "warnings": [o["name"] for o in outcomes if not o["critical"] and not o["success"]],
        "expectations": outcomes,
        "per_class": per_class,
        "data_dir": str(Path(data_dir).resolve()),
        "variant": found.variant_used,
        "variants_found": found.variants_found,
        "skipped_other_variant": found.skipped_other_variant,
        "outside_class_folders": found.outside_class_folders,
        "manifest": str(out / "manifest.csv"),
        "quarantine": str(out / "quarantine.csv"),
        "data_docs": str(docs / "index.html"),
    }
    atomic_files.write_json(out / "validation.json", result)
    if failed and raise_on_failure:
        raise ValidationFailed(failure_message(result))
    return result


def failure_message(result: dict) -> str:
    """One line naming each failed critical expectation and what it saw."""
    details = []
    for o in result["expectations"]:
        if o["critical"] and not o["success"]:
            if o.get("detail"):
                seen = f" ({o['detail']})"
            elif o["unexpected_count"] is not None:
                examples = f", e.g. {', '.join(o['unexpected_values'][:3])}" if o["unexpected_values"] else ""
                seen = f" ({o['unexpected_count']} unexpected{examples})"
            else:
                seen = ""
            details.append(f"{o['name']}{seen}")
    return "critical expectations failed: " + "; ".join(details) + f" (see {result['data_docs']})"


def publish_docs(result: dict, html_path: str | Path) -> None:
    """One HTML file (a KFP HTML artifact) holding GE's rendered validation page of each suite, unchanged.

    Each page is embedded whole (iframe srcdoc); the complete Data Docs site,
    with its index and styles, stays beside the manifest in data_docs/.
    """
    import html

    docs = Path(result["data_docs"]).parent
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>leukoflow data validation</title></head><body>",
        "<h1>Great Expectations validation results</h1>",
    ]
    for page in sorted((docs / "validations").rglob("*.html")):
        suite = page.relative_to(docs / "validations").parts[0]
        parts.append(
            f"<h2>{html.escape(suite)}</h2><iframe style='width:100%;height:90vh;border:1px solid #ccc' "
            f'srcdoc="{html.escape(page.read_text(), quote=True)}"></iframe>'
        )
    parts.append("</body></html>")
    atomic_files.write_text(html_path, "\n".join(parts))


def report_markdown(result: dict) -> str:
    """A short markdown summary of the validation: counts, quarantine, every expectation."""
    lines = [
        "# Data validation",
        "",
        f"- images found: {result['images']} (valid {result['valid']}, quarantined {len(result['quarantined'])})",
        "- per class: " + ", ".join(f"{c} {n}" for c, n in result["per_class"].items()),
        f"- result: {'passed' if result['success'] else 'FAILED: ' + ', '.join(result['failed_expectations'])}",
        "",
        "| expectation | critical | result | unexpected |",
        "|---|---|---|---:|",
    ]
    for o in result["expectations"]:
        lines.append(
            f"| {o['name']} | {'yes' if o['critical'] else 'no'} | {'pass' if o['success'] else 'fail'} | "
            f"{'' if o['unexpected_count'] is None else o['unexpected_count']} |"
        )
    if result["quarantined"]:
        lines += ["", "## Quarantined", ""] + [f"- {p}" for p in result["quarantined"]]
    return "\n".join(lines) + "\n"
