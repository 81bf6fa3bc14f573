"""`leukoflow predict` on a model that refers: against the live server with the calibrated tiny model, and
against the official servicer answering a two-class prediction set (the "could be" wording)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fixtures.calibrated_model import ood_images, smear_images
from fixtures.images import encode_png
from fixtures.model_base import start_server
from typer.testing import CliRunner

from client.test_client import PROBS, FlakyServer
from components import domain
from serving.client import NO_WHITE_CELL, NOT_LIKE_TRAINING, refer_reason
from serving.predict import app

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(calibrated_export, tmp_path_factory):
    base = tmp_path_factory.mktemp("predict-refer") / "leukemia"
    base.mkdir()
    shutil.copytree(calibrated_export, base / "1")
    srv = start_server(base, rest_api_port=-1)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def images(server, tmp_path_factory) -> dict[str, str]:
    """One smear the model does not refer and one noise image it must refer, as files."""
    from serving.client import ServingClient

    folder = tmp_path_factory.mktemp("predict-images")
    smears = [encode_png(x) for x in smear_images(8, seed=31)[0]]
    with ServingClient(target=f"127.0.0.1:{server.grpc_port}") as client:
        answers = client.predict(smears)
    accepted = next(b for b, p in zip(smears, answers) if p.refer is False)
    (folder / "smear.png").write_bytes(accepted)
    (folder / "noise.png").write_bytes(encode_png(ood_images(seed=31)["noise"]))
    return {"smear": str(folder / "smear.png"), "noise": str(folder / "noise.png")}


def test_human_output_says_refer_instead_of_a_stage(server, images):
    result = CliRunner().invoke(app, [images["smear"], images["noise"], "--server", f"127.0.0.1:{server.grpc_port}"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    smear_line = next(line for line in lines if line.startswith(images["smear"] + ":"))
    noise_line = next(line for line in lines if line.startswith(images["noise"] + ":"))
    assert smear_line.split(": ")[1].split(" (")[0] in domain.CLASS_NAMES and "refer" not in smear_line
    assert noise_line == f"{images['noise']}: refer: {NOT_LIKE_TRAINING}  [leukemia v1]"
    assert not any(f"{images['noise']}: {name}" in result.stdout for name in domain.CLASS_NAMES)
    confidence_lines = [line for line in lines if line.startswith("  ")]
    assert len(confidence_lines) == 2 and all(f"{n} " in line for n in domain.CLASS_NAMES for line in confidence_lines)


def test_json_carries_the_referral(server, images):
    result = CliRunner().invoke(
        app, [images["smear"], images["noise"], "--server", f"127.0.0.1:{server.grpc_port}", "--json"]
    )
    assert result.exit_code == 0, result.output
    smear, noise = json.loads(result.stdout)["predictions"]
    assert noise["refer"] is True and noise["in_distribution"] is False and noise["reason"] == NOT_LIKE_TRAINING
    assert isinstance(noise["ood_score"], float) and noise["ood_score"] > smear["ood_score"]
    assert smear["refer"] is False and smear["reason"] is None and smear["in_distribution"] is True
    assert smear["prediction_set"] == [smear["label"]]
    assert all(set(p) >= {"label", "confidences", "model_version"} for p in (smear, noise))
    assert list(noise["confidences"]) == list(domain.CLASS_NAMES)


class TwoStageServer(FlakyServer):
    """The official servicer answering a calibrated-looking response whose prediction set holds Early and Pre."""

    @staticmethod
    def _predict_response(request):
        import tensorflow as tf

        response = FlakyServer._predict_response(request)
        n = request.inputs["images"].tensor_shape.dim[0].size
        outputs = {
            "ood_score": np.full(n, 3.5, np.float32),
            "in_distribution": np.ones(n, bool),
            "prediction_set": np.tile([False, True, True, False], (n, 1)),
            "refer": np.ones(n, bool),
        }
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response


def test_a_set_of_two_stages_is_named(tmp_path):
    image = tmp_path / "smear.png"
    image.write_bytes(encode_png(smear_images(1)[0][0]))
    with TwoStageServer() as fake:
        human = CliRunner().invoke(app, [str(image), "--server", fake.target])
        as_json = CliRunner().invoke(app, [str(image), "--server", fake.target, "--json"])
    assert human.exit_code == 0, human.output
    assert f"{image}: refer: could be Early or Pre" in human.stdout and "Pre (0.600)" not in human.stdout
    assert f"Pre {PROBS[2]:.3f}" in human.stdout
    item = json.loads(as_json.stdout)["predictions"][0]
    assert item["prediction_set"] == ["Early", "Pre"] and item["reason"] == "could be Early or Pre"


class NoWhiteCellServer(TwoStageServer):
    """A calibrated-looking response whose graph found no leukocyte in the image."""

    @staticmethod
    def _predict_response(request):
        import tensorflow as tf

        response = TwoStageServer._predict_response(request)
        n = request.inputs["images"].tensor_shape.dim[0].size
        response.outputs["leukocyte_in_view"].CopyFrom(tf.make_tensor_proto(np.zeros(n, bool)))
        return response


def test_no_white_cell_in_view_is_named(tmp_path):
    image = tmp_path / "smear.png"
    image.write_bytes(encode_png(smear_images(1)[0][0]))
    with NoWhiteCellServer() as fake:
        human = CliRunner().invoke(app, [str(image), "--server", fake.target])
        as_json = CliRunner().invoke(app, [str(image), "--server", fake.target, "--json"])
    assert human.exit_code == 0, human.output
    assert f"{image}: refer: {NO_WHITE_CELL}" in human.stdout
    item = json.loads(as_json.stdout)["predictions"][0]
    assert item["reason"] == NO_WHITE_CELL and item["leukocyte_in_view"] is False


def test_refer_reason_wording():
    assert refer_reason(True, ["Pre"], leukocyte_in_view=False) == NO_WHITE_CELL  # nothing to read
    assert refer_reason(False, ["Pre"], leukocyte_in_view=False) == NOT_LIKE_TRAINING  # unlike any smear first
    assert refer_reason(False, ["Pre"]) == NOT_LIKE_TRAINING  # out of distribution wins over the set
    assert refer_reason(True, ["Early", "Pre", "Pro"]) == "could be Early, Pre or Pro"
    assert refer_reason(True, []) == "no stage fits with the required confidence"


def test_hospital_example_prints_refer(server, images, capsys):
    from client.test_hospital_example import _load

    example = _load()
    assert example.main([images["noise"], images["smear"], "--server", f"127.0.0.1:{server.grpc_port}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{images['noise']}: refer: {NOT_LIKE_TRAINING}  (Benign ")
    assert lines[1].split(": ")[1].split("  ")[0] in domain.CLASS_NAMES
    assert example.main([images["noise"], "--server", f"127.0.0.1:{server.grpc_port}", "--json"]) == 0
    item = json.loads(capsys.readouterr().out)["predictions"][0]
    assert item["refer"] is True and item["reason"] == NOT_LIKE_TRAINING
    with TwoStageServer() as fake:
        assert example.main([images["smear"], "--server", fake.target]) == 0
    assert "refer: could be Early or Pre" in capsys.readouterr().out
