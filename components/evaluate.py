from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(config_uri: str, model: Input[Model], dataset: Input[Dataset], output_uri: str, parent_run_id: str,
             metrics: Output[Metrics], report: Output[Markdown], report_html: Output[HTML]) -> str:
    """Captioning / VQA / retrieval metrics with a report; returns the metrics as JSON."""
    import json

    from vlm import storage
    from vlm.steps import evaluate as step

    out = step(config_uri, model.metadata["uri"], dataset.metadata["uri"], output_uri,
               train_run_id=model.metadata.get("run_id", ""), parent_run_id=parent_run_id)
    values = {k: float(v) for k, v in out["metrics"].items() if isinstance(v, (int, float))}
    for key, value in values.items():
        metrics.log_metric(key, value)
    base = out.get("output", output_uri)
    for artefact, name in ((report, "report.md"), (report_html, "report.html")):
        uri = storage.join(base, name)
        text = storage.read_text(uri) if storage.exists(uri) else f"report not found at {uri}"
        with open(artefact.path, "w") as fh:
            fh.write(text)
        artefact.metadata["uri"] = uri
    return json.dumps(values)
