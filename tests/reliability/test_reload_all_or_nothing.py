"""Defect 1: a refused reload must change nothing (it used to unload the version `stable` names)."""

from __future__ import annotations

import logging
import threading

import grpc
import pytest
from fixtures.model_base import install_version, models_config

pytestmark = pytest.mark.timeout(120)


def _entries(text: str):
    from serving.manager import entries_from_proto, parse_model_config

    return entries_from_proto(parse_model_config(text))


def test_refused_reload_keeps_versions_labels_and_answers(exported_versions, tmp_path, caplog):
    from serving.errors import ServingError
    from serving.manager import ModelManager

    base = tmp_path / "leukemia"
    for v in (1, 2):
        install_version(exported_versions, base, v)
    manager = ModelManager(_entries(models_config([("leukemia", base, [1], {"stable": 1})])), warmup=False)
    manager.start()

    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def client() -> None:  # what `stable` traffic sees during the refused reload
        while not stop.is_set():
            try:
                manager.resolve("leukemia", label="stable")
                answered[0] += 1
            except ServingError as exc:
                failures.append(exc.message)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        # One step: move `stable` to a version this same config introduces (TF Serving refuses it).
        with caplog.at_level(logging.ERROR, logger="serving.manager"), pytest.raises(ServingError) as info:
            manager.set_config(_entries(models_config([("leukemia", base, [2], {"stable": 2})])))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert manager.loaded_versions("leukemia") == [1]
    assert manager.labels("leukemia") == {"stable": 1}
    assert manager.resolve("leukemia", label="stable").version == 1
    assert failures == [] and answered[0] > 0
    assert "unchanged" in caplog.text and "version 2" in caplog.text

    # A label on a version the new policy drops is refused too, before anything is unloaded.
    with pytest.raises(ServingError):
        manager.set_config(_entries(models_config([("leukemia", base, [2], {"stable": 1})])))
    assert manager.loaded_versions("leukemia") == [1] and manager.labels("leukemia") == {"stable": 1}

    # The two steps the gate writes still work: load beside, then move the label.
    manager.set_config(_entries(models_config([("leukemia", base, [1, 2], {"stable": 1})])))
    assert manager.loaded_versions("leukemia") == [1, 2]
    manager.set_config(_entries(models_config([("leukemia", base, [2], {"stable": 2})])))
    assert manager.loaded_versions("leukemia") == [2] and manager.resolve("leukemia", label="stable").version == 2
