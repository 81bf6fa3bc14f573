"""The cluster config: its checks, what each task declares from it, and one package for compile, schedule and the CronJob."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline import cluster_packages
from pipelines import cluster_config
from pipelines.cli import app

EXAMPLE = cluster_config.DEFAULT_PATH
GOOD = {
    "LEUKOFLOW_IMAGE": "registry.example.org/leukoflow:1.2.3",
    "LEUKOFLOW_DATA_PVC": "leukoflow-data",
    "LEUKOFLOW_EXTERNAL_OOD_DIR": "/data/external/chula-rbc-12",
    "LEUKOFLOW_MODEL_STORE_PVC": "leukemia-model-store",
    "MLFLOW_TRACKING_URI": "http://mlflow.mlflow.svc.cluster.local:5000",
}


def _text(**changes: str | None) -> str:
    values = {**GOOD, **changes}
    return "".join(f"{k}={v}\n" for k, v in values.items() if v is not None)


def _write(tmp_path: Path, **changes: str | None) -> Path:
    path = tmp_path / "cluster.env"
    path.write_text(_text(**changes))
    return path


def test_the_example_names_every_field_and_parses():
    keys = set(cluster_config.parse_env_text(EXAMPLE.read_text()))
    assert keys == set(cluster_config.FIELDS), "the example must name every value a platform team sets"
    config = cluster_config.load(EXAMPLE)
    assert config.mlflow_tracking_uri.startswith("http") and config.external_ood_dir.startswith("/data/")


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"MLFLOW_TRACKING_URI": None}, "MLFLOW_TRACKING_URI is missing"),
        ({"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}, "MLFLOW_TRACKING_URI='sqlite:///mlflow.db'"),
        ({"LEUKOFLOW_DATA_PVC": "Data_Volume"}, "LEUKOFLOW_DATA_PVC='Data_Volume': not a Kubernetes object name"),
        ({"LEUKOFLOW_MODEL_STORE_PVC": ""}, "LEUKOFLOW_MODEL_STORE_PVC is missing or empty"),
        (
            {"LEUKOFLOW_EXTERNAL_OOD_DIR": "/mnt/external"},
            "LEUKOFLOW_EXTERNAL_OOD_DIR='/mnt/external': must be a folder",
        ),
        ({"LEUKOFLOW_EXTERNAL_OOD_DIR": "/data/../etc"}, "LEUKOFLOW_EXTERNAL_OOD_DIR"),
        ({"LEUKOFLOW_IMAGE": "not an image"}, "LEUKOFLOW_IMAGE='not an image'"),
        ({"LEUKOFLOW_DATA_PVCS": "x"}, "unknown field(s) LEUKOFLOW_DATA_PVCS"),
        ({"LEUKOFLOW_TRAIN_ACCELERATOR": "gpu"}, "LEUKOFLOW_TRAIN_ACCELERATOR='gpu': an extended resource name"),
        ({"LEUKOFLOW_DVC_REMOTE": "s3://bucket/cases"}, "LEUKOFLOW_DVC_REMOTE and LEUKOFLOW_DVC_SECRET go together"),
        (
            {"LEUKOFLOW_CASES_PVC": "cases", "LEUKOFLOW_DVC_REMOTE": "s3://b/c", "LEUKOFLOW_DVC_SECRET": "dvc"},
            "LEUKOFLOW_CASES_PVC and LEUKOFLOW_DVC_REMOTE are both set",
        ),
    ],
)
def test_a_bad_config_names_the_field(changes, named):
    with pytest.raises(cluster_config.ClusterConfigError) as err:
        cluster_config.parse(_text(**changes), source="cluster.env")
    assert named in str(err.value) and str(err.value).startswith("cluster.env:")


def test_a_line_that_is_not_key_value_is_named_by_number():
    with pytest.raises(cluster_config.ClusterConfigError, match="line 2: expected KEY=VALUE"):
        cluster_config.parse("# a comment\nmlflow uri\n" + _text(), source="f")


def test_compile_refuses_a_bad_config_with_the_field_named(tmp_path):
    config = _write(tmp_path, LEUKOFLOW_DATA_PVC=None)
    result = CliRunner().invoke(
        app, ["pipeline", "compile", "--cluster-config", str(config), "-o", str(tmp_path / "p.yaml")]
    )
    assert result.exit_code == 1
    assert "LEUKOFLOW_DATA_PVC is missing" in result.output and not (tmp_path / "p.yaml").exists()
    missing = CliRunner().invoke(app, ["pipeline", "compile", "--cluster-config", str(tmp_path / "none.env")])
    assert missing.exit_code == 1 and "cluster config not found" in missing.output


def _declarations(package: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(package.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return spec, executors


def _summary(executors: dict) -> dict[str, set[str]]:
    """Per executor: 'pvc:CLAIM@PATH', 'configmap:NAME/KEY->ENV', 'secret:NAME/KEY->ENV'."""
    out: dict[str, set[str]] = {}
    for name, cfg in executors.items():
        items = {f"pvc:{m['constant']}@{m['mountPath']}" for m in cfg.get("pvcMount", [])}
        for ref in cfg.get("configMapAsEnv", []):
            items |= {f"configmap:{ref['configMapName']}/{p['configMapKey']}->{p['envVar']}" for p in ref["keyToEnv"]}
        for ref in cfg.get("secretAsEnv", []):
            items |= {f"secret:{ref['secretName']}/{p['secretKey']}->{p['envVar']}" for p in ref["keyToEnv"]}
        out[name.removeprefix("exec-")] = items
    return out


def test_each_task_declares_exactly_what_it_needs(tmp_path):
    package = cluster_packages.compile_package(_write(tmp_path), tmp_path / "p.yaml")
    spec, executors = _declarations(package)
    data = "pvc:leukoflow-data@/data"
    mlflow = "configmap:leukoflow-cluster/MLFLOW_TRACKING_URI->MLFLOW_TRACKING_URI"
    assert _summary(executors) == {
        "validate-op": {data},
        "dedup-op": {data},
        "preprocess-op": {data},
        "evaluate-op": {data},  # the external smears
        "gate-op": {mlflow},  # the champion
        "promote-op": {mlflow, "pvc:leukemia-model-store@/models"},
    }  # split, reference, train, compare: artifacts only
    env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"]["exec-promote-op"]["container"]["env"]}
    assert env == {"LEUKOFLOW_MODEL_BASE": "/models", "LEUKOFLOW_MODELS_CONFIG": "/models/models.config"}
    assert all(
        "env" not in e["container"] for n, e in spec["deploymentSpec"]["executors"].items() if n != "exec-promote-op"
    )
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["data_dir"]["defaultValue"] == "/data"
    assert parameters["external_ood_dir"]["defaultValue"] == GOOD["LEUKOFLOW_EXTERNAL_OOD_DIR"]
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {GOOD["LEUKOFLOW_IMAGE"]}


def test_cases_come_from_a_volume_or_from_dvc_with_its_secret(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    volume = cluster_packages.compile_package(
        _write(tmp_path / "a", LEUKOFLOW_CASES_PVC="leukoflow-cases"), tmp_path / "a.yaml"
    )
    summary = _summary(_declarations(volume)[1])
    for step in ("validate-op", "dedup-op", "preprocess-op"):
        assert "pvc:leukoflow-cases@/cases" in summary[step]
    assert not any("leukoflow-cases" in item for step in ("evaluate-op", "promote-op") for item in summary[step])

    dvc = cluster_packages.compile_package(
        _write(tmp_path / "b", LEUKOFLOW_DVC_REMOTE="s3://bucket/cases", LEUKOFLOW_DVC_SECRET="leukoflow-dvc"),
        tmp_path / "b.yaml",
    )
    spec, executors = _declarations(dvc)
    summary = _summary(executors)
    secrets = {i for items in summary.values() for i in items if i.startswith("secret:")}
    assert secrets == {f"secret:leukoflow-dvc/{k}->{k}" for k in cluster_config.DVC_SECRET_KEYS}
    assert all(i.startswith("secret:") is False for i in summary["promote-op"] | summary["gate-op"])
    validate_env = spec["deploymentSpec"]["executors"]["exec-validate-op"]["container"]["env"]
    assert {"name": "LEUKOFLOW_DVC_REMOTE", "value": "s3://bucket/cases"} in validate_env


class _FakeKfp:
    """kfp.Client for schedule and the trigger: records the package bytes each would send."""

    sent: list[tuple[str, bytes]] = []

    def __init__(self, host=None, **_):
        pass

    def get_experiment(self, experiment_name):
        class Experiment:
            experiment_id = "exp-1"

        return Experiment()

    def create_recurring_run(self, pipeline_package_path, **kwargs):
        _FakeKfp.sent.append(("schedule", Path(pipeline_package_path).read_bytes()))

        class Recurring:
            recurring_run_id = "rr-1"

        return Recurring()

    def create_run_from_pipeline_package(self, pipeline_file, arguments, **kwargs):
        _FakeKfp.sent.append(("trigger", Path(pipeline_file).read_bytes()))

        class Run:
            run_id = "run-1"

        return Run()


def test_compile_schedule_and_the_cronjob_trigger_submit_the_same_bytes(tmp_path, monkeypatch):
    import kfp

    from components import home
    from monitoring import trigger

    monkeypatch.setattr(kfp, "Client", _FakeKfp)
    _FakeKfp.sent = []
    compiled = cluster_packages.compile_package(EXAMPLE, tmp_path / "compiled.yaml").read_bytes()

    kept = home.home() / "pipeline.yaml"
    kept.write_text("the package `compile` wrote\n")
    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "schedule",
            "--cron",
            "0 0 3 * * *",
            "--cluster-config",
            str(EXAMPLE),
            "--host",
            "http://kfp",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recurring_run_id"] == "rr-1"
    assert kept.read_text() == "the package `compile` wrote\n", "schedule must not overwrite compile's package"

    package = cluster_packages.drift_trigger_package(EXAMPLE, tmp_path / "work")
    verdict = {"status": "drift", "reference": "v1", "report_json": "r.json"}
    config = trigger.TriggerConfig(host="http://kfp", package=str(package), state_file=tmp_path / "state.json")
    assert trigger.maybe_trigger(verdict, config)["triggered"]

    assert [who for who, _ in _FakeKfp.sent] == ["schedule", "trigger"]
    for who, sent in _FakeKfp.sent:
        assert sent == compiled, f"{who} submitted other bytes than `compile --cluster-config` wrote"


def test_schedule_takes_a_config_or_a_package(tmp_path):
    neither = CliRunner().invoke(app, ["pipeline", "schedule", "--cron", "0 0 3 * * *"])
    assert neither.exit_code == 1 and "exactly one of --cluster-config" in neither.output
    bad = CliRunner().invoke(
        app,
        [
            "pipeline",
            "schedule",
            "--cron",
            "0 0 3 * * *",
            "--cluster-config",
            str(_write(tmp_path, LEUKOFLOW_IMAGE=None)),
        ],
    )
    assert bad.exit_code == 1 and "LEUKOFLOW_IMAGE is missing" in bad.output


def test_training_asks_for_the_configured_accelerator_or_none(tmp_path):
    def train_resources(**changes) -> dict:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        package = cluster_packages.compile_package(_write(folder, **changes), folder / "p.yaml")
        spec, _ = _declarations(package)
        return spec["deploymentSpec"]["executors"]["exec-train-op"]["container"]["resources"]

    accelerator = train_resources()["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1"
    assert train_resources(LEUKOFLOW_TRAIN_ACCELERATOR="amd.com/gpu")["accelerator"]["resourceType"] == "amd.com/gpu"
    assert "accelerator" not in train_resources(LEUKOFLOW_TRAIN_ACCELERATOR="none")
