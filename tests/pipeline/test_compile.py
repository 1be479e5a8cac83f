"""The compiled pipeline YAML: loads back with kfp, has the DAG we promise, and carries the cluster settings."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from vlm.cli import app

EXPECTED_EDGES = {
    ("prepare", "shard-partitions"), ("shard-partitions", "for-loop-2"), ("for-loop-2", "shard"),
    ("shard", "expert-groups"), ("expert-groups", "for-loop-3"), ("for-loop-3", "experts-index"),
    ("experts-index", "pretrain"), ("pretrain", "curate"), ("curate", "finetune"), ("finetune", "evaluate"),
    ("evaluate", "register"), ("register", "condition-4"),
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "pipeline.yaml"
    cfg = tmp_path_factory.mktemp("cfg") / "cluster.yaml"
    cfg.write_text(yaml.safe_dump({
        "root": "s3://vlm-data/runs",
        "cluster": {"image": "registry.example/vlm:1.2.3", "training_image": "registry.example/vlm:1.2.3-cuda",
                    "gpus_per_node": 8, "node_selector": {"nvidia.com/gpu.product": "H100"},
                    "env_from_config_maps": ["vlm-vlm-platform-env"], "env_from_secrets": ["vlm-s3-credentials"]},
    }))
    res = CliRunner().invoke(app, ["compile", "--output", str(out), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    return out


def _docs(path):
    return list(yaml.safe_load_all(path.read_text()))


def _deps(dag: dict) -> set[tuple[str, str]]:
    edges = set()
    for name, task in dag["tasks"].items():
        for dep in task.get("dependentTasks", []):
            edges.add((dep, name))
    return edges


def test_loads_back_with_kfp(compiled):
    from kfp import components

    pipeline = components.load_component_from_file(str(compiled))
    assert pipeline.name == "vlm-platform"
    assert set(pipeline.component_spec.inputs) == {"config_yaml", "overrides_json", "run_name", "launcher"}


def test_dag_structure(compiled):
    spec, platform = _docs(compiled)
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "finish"}
    assert root["finish"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    body = spec["components"]["comp-exit-handler-1"]["dag"]
    assert EXPECTED_EDGES <= _deps(body), _deps(body)
    for name in ("for-loop-2", "for-loop-3"):  # the sharding and the experts fan-outs
        assert "parameterIterator" in body["tasks"][name], name
    condition = body["tasks"]["condition-4"]["triggerPolicy"]["condition"]
    assert "register" in condition and "true" in condition.lower()
    # caching: on for deterministic data steps, off for training and registry
    assert body["tasks"]["shard"]["cachingOptions"].get("enableCache") is True
    assert body["tasks"]["shard-partitions"]["cachingOptions"].get("enableCache") is True
    assert body["tasks"]["expert-groups"]["cachingOptions"].get("enableCache") is True
    for name in ("pretrain", "finetune", "register", "prepare"):
        assert not body["tasks"][name]["cachingOptions"].get("enableCache"), name


def test_components_use_our_image_and_install_nothing(compiled):
    spec, _ = _docs(compiled)
    executors = spec["deploymentSpec"]["executors"]
    assert executors
    for name, ex in executors.items():
        container = ex["container"]
        assert container["image"] == "registry.example/vlm:1.2.3", name
        script = " ".join(container.get("command", []))
        assert "pip install" not in script, f"{name} installs packages at run time"


def test_kubernetes_platform_config(compiled):
    spec, platform = _docs(compiled)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    experts = executors["exec-experts"]
    assert experts["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "H100"}
    assert experts["tolerations"][0]["key"] == "nvidia.com/gpu"
    for name, ex in executors.items():
        assert ex["secretAsEnv"][0]["secretName"] == "vlm-s3-credentials", name
        keys = {k["secretKey"] for k in ex["secretAsEnv"][0]["keyToEnv"]}
        assert keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert ex["configMapAsEnv"][0]["configMapName"] == "vlm-vlm-platform-env"
    gpu = spec["deploymentSpec"]["executors"]["exec-experts"]["container"]["resources"]
    assert gpu["accelerator"]["resourceCount"] == "1"


def test_local_compile_has_no_kubernetes_settings(tmp_path):
    from kfp import compiler

    from pipelines.vlm_pipeline import build_pipeline

    out = tmp_path / "local.yaml"
    compiler.Compiler().compile(build_pipeline(), str(out))
    assert len(_docs(out)) == 1
