"""The review queue: referred images ranked by OOD score and set size; suspect labels by confident learning."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from components.cases import referred, review_queue, store
from tests.cases.conftest import render_jpeg


def _oof(tmp_path, name: str, flip_strength: float, seed: int) -> tuple:
    """Synthetic recipe_cv logits: 40 images per class read confidently as their label, except four Benign
    images every recipe reads as Early (as the real data's Benign smears are) and one Pro image read as Pre."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 40)
    logits = rng.normal(0, 0.5, (len(labels), 4))
    logits[np.arange(len(labels)), labels] += 4.0
    odd = {3: 1, 17: 1, 25: 1, 31: 1, 150: 2}  # index -> the class it is read as
    for i, read_as in odd.items():  # the evidence points at another class
        logits[i, labels[i]] -= 4.0
        logits[i, read_as] += 4.0 + flip_strength
    paths = np.array([f"data/{['Benign', 'Early', 'Pre', 'Pro'][y]}/img{i:03d}.jpg" for i, y in enumerate(labels)])
    stacked = np.stack([logits + rng.normal(0, 0.2, logits.shape) for _ in range(3)])  # views 1, 2, 4
    path = tmp_path / f"{name}.npz"
    np.savez_compressed(path, logits=stacked, labels=labels, view_counts=np.array([1, 2, 4]), paths=paths)
    return path, odd, paths


def test_confident_learning_finds_the_planted_label_errors(tmp_path):
    path, odd, paths = _oof(tmp_path, "a", 2.0, 0)
    probabilities, labels, _ = review_queue.load_oof(path)
    found = review_queue.label_issues(probabilities, labels)
    assert set(np.flatnonzero(found["flagged"])) == set(odd)
    assert all(found["read_as"][i] == c for i, c in odd.items())
    assert found["thresholds"].shape == (4,) and (found["thresholds"] > 0.5).all()


def test_every_recipe_agreeing_ranks_first(tmp_path):
    a, odd, paths = _oof(tmp_path, "a", 2.0, 0)
    b, _, _ = _oof(tmp_path, "b", 1.5, 1)
    ranked = review_queue.suspect_labels([a, b])
    top = ranked[: len(odd)]
    assert {r["path"] for r in top} == {paths[i] for i in odd}
    assert all(r["flagged_by"] == 2 and r["recipes"] == 2 for r in top)
    benign = [r for r in top if r["label"] == "Benign"]
    assert len(benign) == 4 and {r["read_as"] for r in benign} == {"Early"}


def test_bad_logits_files_are_clear_errors(tmp_path):
    np.savez(tmp_path / "x.npz", logits=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="lacks labels, paths"):
        review_queue.load_oof(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError, match="recipe_cv.py --logits"):
        review_queue.load_oof(tmp_path / "missing.npz")


def test_referred_images_rank_by_ood_score_and_set_size(tmp_path, base_data):
    kept = referred.ReferredImages(tmp_path / "referred")
    rows = {  # request id -> (ood_score, prediction set)
        "far-wide": (90.0, ["Benign", "Early", "Pre"]),
        "far-empty": (80.0, []),
        "near-single": (5.0, ["Pre"]),
        "mid-pair": (40.0, ["Early", "Pre"]),
    }
    images = {}
    for k, (rid, (ood, members)) in enumerate(rows.items()):
        images[rid] = render_jpeg("Pre", 60 + k)
        kept.keep(images[rid], {"request_id": rid, "ood_score": ood, "prediction_set": members})
    cases = tmp_path / "cases"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "cases",
            "queue",
            "--kept-dir",
            str(tmp_path / "referred"),
            "--cases-dir",
            str(cases),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    order = [r["request_id"] for r in result["referred"]]
    # far-wide and far-empty tie on the mean rank (one is farther, the other wider); the OOD score breaks the tie.
    assert order == ["far-wide", "far-empty", "mid-pair", "near-single"]
    assert result["referred_waiting"] == 4 and result["suspect_labels"] == []

    # Once a referral is labelled it leaves the queue.
    source = kept.find("far-empty")["path"]
    store.add_cases(
        [store.Candidate(source, "Pre", "served", source_request_id="far-empty")], cases, store.base_index(base_data)
    )
    later = review_queue.review_queue(tmp_path / "referred", cases, [])
    assert [r["request_id"] for r in later["referred"]] == ["far-wide", "mid-pair", "near-single"]
