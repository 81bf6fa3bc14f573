"""How much of a slide an image-level split leaks into test, and what the colour shortcut scores once slides are kept apart.

Given the pseudo-slide split and the image-level split of the same kept images (`leukoflow data split` and
`leukoflow data split --image-level`), it reports the pseudo-slides (count per class, sizes), the share of
the image-level test images whose pseudo-slide also has training images, and the shortcut baseline
(components/evaluate/shortcut.py: gradient-boosted trees on global colour statistics) on both splits.

    python -m experiments.pseudo_slides --slides SPLIT_DIR --images SPLIT_DIR

Writes experiments/results/pseudo_slides.{json,md}. About 2 minutes on 2 idle cores.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import typer

from benchmarks import harness

app = typer.Typer(add_completion=False)


@app.command()
def main(
    slides: Path = typer.Option(..., "--slides", help="Split directory made by pseudo-slide."),
    images: Path = typer.Option(..., "--images", help="Split directory made by image (--image-level)."),
) -> None:
    import pandas as pd

    from components import atomic_files
    from components.evaluate.shortcut import shortcut_on_split

    by_slide = pd.read_csv(slides / "split.csv")
    by_image = pd.read_csv(images / "split.csv")
    joined = by_image[["id", "split"]].merge(by_slide[["id", "group_id"]], on="id")
    train_slides = set(joined.loc[joined["split"] == "train", "group_id"])
    test = joined[joined["split"] == "test"]
    sizes = by_slide.groupby("group_id").size()
    keys = ("accuracy", "macro_f1", "benign_recall", "train_images", "test_images")
    result = {
        "when": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "host": harness.host_facts(),
        "command": harness.command_line("experiments.pseudo_slides", sys.argv[1:]),
        "pseudo_slides_per_class": {k: int(v) for k, v in by_slide.groupby("label")["group_id"].nunique().items()},
        "slide_size": {"min": int(sizes.min()), "median": float(sizes.median()), "max": int(sizes.max())},
        "split_counts_by_slide": {k: int(v) for k, v in by_slide["split"].value_counts().items()},
        "image_level_test_with_slide_in_train": float(test["group_id"].isin(train_slides).mean()),
        "image_level_test_images": int(len(test)),
        "shortcut_by_slide": {k: shortcut_on_split(slides, use_cache=False)[k] for k in keys},
        "shortcut_by_image": {k: shortcut_on_split(images, use_cache=False)[k] for k in keys},
    }
    s, i = result["shortcut_by_slide"], result["shortcut_by_image"]
    md = "\n".join(
        [
            "# Pseudo-slides: leakage of the image-level split, and the colour shortcut on both splits",
            "",
            f"`{result['command']}`, {result['when']}, load {result['host']['load_average_1m']}.",
            "",
            f"- Pseudo-slides per class: {result['pseudo_slides_per_class']}; images per slide "
            f"{result['slide_size']['min']}-{result['slide_size']['max']} (median {result['slide_size']['median']:.0f}).",
            f"- Image-level test images whose pseudo-slide also has training images: "
            f"{100 * result['image_level_test_with_slide_in_train']:.1f}% of {result['image_level_test_images']}.",
            "",
            "| split | shortcut accuracy | macro-F1 | Benign recall | train / test images |",
            "|---|---|---|---|---|",
            f"| by image | {100 * i['accuracy']:.2f}% | {i['macro_f1']:.4f} | {100 * i['benign_recall']:.2f}% | "
            f"{i['train_images']} / {i['test_images']} |",
            f"| by pseudo-slide | {100 * s['accuracy']:.2f}% | {s['macro_f1']:.4f} | {100 * s['benign_recall']:.2f}% | "
            f"{s['train_images']} / {s['test_images']} |",
            "",
        ]
    )
    folder = harness.results_dir(__file__)
    atomic_files.write_text(folder / "pseudo_slides.json", json.dumps(result, indent=2))
    atomic_files.write_text(folder / "pseudo_slides.md", md)
    print(md)


if __name__ == "__main__":
    app()
