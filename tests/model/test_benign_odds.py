"""experiments/benign_odds: the Benign target's arithmetic and the hard-smear lists from out-of-fold logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import benign_odds


def test_the_target_allows_one_miss_of_74_and_none_of_49():
    assert benign_odds.allowed_misses(74) == 1  # 73/74 = 0.9865, 72/74 = 0.9730
    assert benign_odds.allowed_misses(49) == 0  # 48/49 = 0.9796
    assert benign_odds.allowed_misses(100) == 2


def test_odds_are_the_binomial_tail_and_the_needed_rate_inverts_them():
    from scipy.stats import binom

    for rate in (0.0, 0.005, 0.0215):
        assert benign_odds.meet_odds(rate, 74, 1) == pytest.approx(binom.cdf(1, 74, rate))
    needed = benign_odds.rate_for_odds(0.95, 74, 1)
    assert benign_odds.meet_odds(needed, 74, 1) == pytest.approx(0.95, abs=1e-6)
    assert benign_odds.meet_odds(needed * 1.05, 74, 1) < 0.95


def _write(path, labels, predicted, paths):
    logits = np.full((3, len(labels), 4), -5.0, np.float32)
    logits[:, np.arange(len(labels)), predicted] = 5.0
    np.savez(path, logits=logits, labels=np.array(labels), view_counts=np.array([1, 2, 4]), paths=np.array(paths))


def test_smears_missed_by_every_set_are_told_from_those_some_miss(tmp_path, monkeypatch):
    monkeypatch.setattr(benign_odds, "RESULTS", tmp_path / "results")
    labels = [0, 0, 0, 0, 1, 2]
    paths = [f"/data/{name}.jpg" for name in ("B1", "B2", "B3", "B4", "E1", "P1")]
    _write(tmp_path / "a.npz", labels, [1, 1, 0, 0, 1, 2], paths)  # misses B1, B2
    _write(tmp_path / "b.npz", labels, [1, 0, 0, 0, 0, 2], paths)  # misses B1; E1 read as Benign
    result = benign_odds.main(["--logits", f"a={tmp_path / 'a.npz'}", f"b={tmp_path / 'b.npz'}", "--ensemble", "a+b"])
    assert result["missed_by_every_single_set"] == ["B1"]
    assert result["missed_by_some"] == {"B2": 1}
    assert result["sets"]["a"]["benign_missed"] == 2 and result["sets"]["b"]["early_as_benign"] == 1
    assert result["sets"]["a+b"]["missed"] == ["B1"]  # B2: a tie of the two, which argmax gives to Benign
    assert result["sets"]["b"]["meet_odds"] == pytest.approx(benign_odds.meet_odds(0.25, 74, 1))
    written = json.loads((tmp_path / "results" / "benign_odds.json").read_text())
    assert written["sets"]["a"]["benign_recall"] == pytest.approx(0.5)


def test_sets_of_other_images_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(benign_odds, "RESULTS", tmp_path / "results")
    _write(tmp_path / "a.npz", [0, 1], [0, 1], ["/a.jpg", "/b.jpg"])
    _write(tmp_path / "b.npz", [1, 0], [0, 1], ["/b.jpg", "/a.jpg"])
    with pytest.raises(SystemExit, match="not those of the other sets"):
        benign_odds.main(["--logits", f"a={tmp_path / 'a.npz'}", f"b={tmp_path / 'b.npz'}"])
    with pytest.raises(SystemExit, match="NAME=FILE"):
        benign_odds.main(["--logits", str(tmp_path / "a.npz")])


def test_pooled_images_come_in_the_order_the_cross_validation_scores_them(tiny_split, tmp_path):
    from components.train import input as train_input
    from experiments import recipe_cv

    pool = recipe_cv._pool(tiny_split, tmp_path / "pool")  # train + val: 4 shards, interleaved as training reads them
    pooled = recipe_cv.pooled_images(pool)
    read = np.concatenate([y.numpy() for _, y in train_input.dataset(pool, "train", 32, 8, cache=False)])
    assert [label for _, label in pooled] == read.tolist()
    assert len({path for path, _ in pooled}) == len(read) and len(set(read.tolist())) == 4
