"""The gate decision itself (pure) and lineage tags (files only, no server)."""

from __future__ import annotations

import json

import pytest

from vlm.registry.config import GateConfig
from vlm.registry.mlflow_registry import Registration, RegistryError, evaluate_gate, lineage_tags, metrics_from_tags


def test_first_version_passes_on_thresholds_alone():
    ok, reasons, _ = evaluate_gate({"cider": 0.3}, None, GateConfig(thresholds={"cider": 0.2}))
    assert ok and reasons == ["no current champion"]
    ok, reasons, _ = evaluate_gate({"cider": 0.1}, None, GateConfig(thresholds={"cider": 0.2}))
    assert not ok and "below minimum" in reasons[0]


def test_must_beat_champion_by_delta():
    gate = GateConfig(primary_metric="cider", min_delta=0.05)
    ok, _, cmp = evaluate_gate({"cider": 0.56}, {"cider": 0.5}, gate)
    assert ok and cmp["delta"] == pytest.approx(0.06) and cmp["champion"] == 0.5
    ok, reasons, _ = evaluate_gate({"cider": 0.54}, {"cider": 0.5}, gate)
    assert not ok and "does not beat" in reasons[0]
    # delta 0: a tie is not an improvement
    assert not evaluate_gate({"cider": 0.5}, {"cider": 0.5}, GateConfig())[0]


def test_lower_is_better_and_maximums_and_missing_metrics():
    gate = GateConfig(primary_metric="perplexity", higher_is_better=False, maximums={"perplexity": 50})
    assert evaluate_gate({"perplexity": 20}, {"perplexity": 25}, gate)[0]
    assert not evaluate_gate({"perplexity": 30}, {"perplexity": 25}, gate)[0]
    ok, reasons, _ = evaluate_gate({"perplexity": 60}, None, gate)
    assert not ok and "above maximum" in reasons[0]
    ok, reasons, _ = evaluate_gate({"bleu4": 0.2}, None, GateConfig(thresholds={"vqa_accuracy": 0.1}))
    assert not ok and any("vqa_accuracy missing" in r for r in reasons) and any("primary" in r for r in reasons)


def test_a_registration_round_trips_through_its_json():
    """The register step writes registration.json from to_dict(); the promote step reads it back."""
    passed, reasons, comparison = evaluate_gate({"cider": 0.56}, {"cider": 0.5}, GateConfig(min_delta=0.05,
                                                                                             primary_metric="cider"))
    registered = Registration(name="vlm-linear", version="3", gate_passed=passed, reasons=reasons,
                              comparison=comparison)
    written = json.loads(json.dumps(registered.to_dict()))
    assert written == {"name": "vlm-linear", "version": "3", "gate_passed": True, "reasons": reasons,
                       "comparison": comparison}
    assert Registration(**written) == registered


def test_gate_config_rejects_unknown_keys():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        GateConfig(primary="cider")


def test_metrics_from_tags_ignores_other_tags():
    assert metrics_from_tags({"vlm.metric.cider": "0.5", "vlm.model_uri": "x", "vlm.metric.bad": "n/a"}) == {"cider": 0.5}


def test_lineage_tags(tmp_path, tiny_artefact):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"name": "d", "shards": []}))
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "labels.json").write_text(json.dumps({"experts": {"depth": {"name": "depth", "version": "1.2"},
                                                                "ocr": {"name": "ocr", "version": "0.3"}}}))
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text("name: t\n")
    tags = lineage_tags(tiny_artefact, str(data), str(labels), "run123", str(cfg))
    from vlm import storage

    assert tags["vlm.data_manifest_sha256"] == storage.sha256_file(data / "manifest.json")
    assert tags["vlm.labels_version"] == "depth:1.2,ocr:0.3"
    assert tags["vlm.training_run_id"] == "run123"
    assert json.loads(tags["vlm.model_config"])["llm"]["type"] == "tiny"
    assert tags["vlm.pipeline_config"] == "name: t\n"
    with pytest.raises(RegistryError, match="no data manifest"):
        lineage_tags(tiny_artefact, str(tmp_path / "nowhere"))
