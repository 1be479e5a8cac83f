"""``vlm run`` / ``vlm compile`` / ``vlm submit`` / ``vlm runs``: the whole pipeline, locally or on Kubeflow.

The kfp code lives in ``pipelines/`` (the library ``vlm`` does not import kfp); these commands import it lazily.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

runs_app = typer.Typer(help="List and inspect pipeline runs on a Kubeflow Pipelines server.", no_args_is_help=True)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")

    @app.command("run")
    def run_cmd(
        config: Path = typer.Option(Path("configs/quickstart.yaml"), "--config", "-c", help="Pipeline YAML."),
        run_name: str = typer.Option("", "--run-name", help="Name of this run (default <name>-<timestamp>)."),
        set_: list[str] = typer.Option([], "--set", help="Override a knob, e.g. --set train.steps=20."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print every step's full log (kfp's output)."),
    ) -> None:
        """Run the whole pipeline on this machine (kfp local runner, torchrun, local MLflow and disk).

        Prints a line per stage as it starts and ends; each step's full log is in <run folder>/logs/<step>.log
        and in the stage's MLflow run (logs/).
        """
        import yaml

        from vlm.config import ConfigError
        from pipelines.run import run_local

        overrides = {}
        for item in set_:
            key, sep, value = item.partition("=")
            if not sep:
                _fail(ValueError(f"--set expects KEY=VALUE, got {item!r}"))
            overrides[key] = yaml.safe_load(value)
        try:
            out = run_local(str(config), run_name=run_name, overrides=overrides, verbose=verbose)
        except ConfigError as exc:
            _fail(exc)
        typer.secho(f"\npipeline run {out['run_name']} finished in {out['elapsed_s']:.0f}s", fg=typer.colors.GREEN)
        typer.echo(f"  MLflow experiment : {out['experiment']} (parent run {out.get('parent_run_id', '?')})")
        model = out.get("model")
        if model:
            aliases = ", ".join(model["aliases"]) or "none"
            typer.echo(f"  registered model  : {model['name']} version {model['version']} (aliases: {aliases})")
            typer.echo(f"  all aliases       : {json.dumps(model['all_aliases'])}")
        typer.echo(f"  watch it in MLflow: {out['mlflow_ui']}")

    @app.command("compile")
    def compile_cmd(
        output: Path = typer.Option(Path("pipeline.yaml"), "--output", "-o", help="Where to write the pipeline YAML."),
        config: Path = typer.Option(None, "--config", "-c", help="Config whose `cluster` section sets images/GPUs."),
    ) -> None:
        """Compile the pipeline to a kfp v2 YAML for Kubeflow Pipelines."""
        from pipelines.run import compile_pipeline

        typer.echo(compile_pipeline(str(output), str(config) if config else None))

    @app.command("submit")
    def submit_cmd(
        config: Path = typer.Option(..., "--config", "-c", help="Pipeline YAML (root must be s3://)."),
        host: str = typer.Option(None, "--host", envvar="KFP_HOST", help="Kubeflow Pipelines API URL."),
        namespace: str = typer.Option(None, "--namespace", "-n", help="Kubeflow profile namespace."),
        experiment: str = typer.Option(None, "--experiment", help="kfp experiment (default: the pipeline name)."),
        run_name: str = typer.Option("", "--run-name"),
        package: Path = typer.Option(None, "--package", help="A pipeline YAML from `vlm compile` (default: compile now)."),
    ) -> None:
        """Submit a pipeline run to Kubeflow Pipelines; training steps run as PyTorchJobs."""
        from pipelines.run import submit

        try:
            out = submit(str(config), host, namespace, experiment, run_name, str(package) if package else None)
        except (ValueError, OSError) as exc:
            _fail(exc)
        typer.echo(json.dumps(out, indent=2))

    @runs_app.command("list")
    def runs_list(host: str = typer.Option(None, "--host", envvar="KFP_HOST"),
                  namespace: str = typer.Option(None, "--namespace", "-n")) -> None:
        """Recent runs on the Kubeflow Pipelines server."""
        from pipelines.run import list_runs

        for r in list_runs(host, namespace):
            typer.echo(f"{r['run_id']}  {r['state']:<10} {r['created_at']}  {r['name']}")

    @runs_app.command("status")
    def runs_status(run_id: str, host: str = typer.Option(None, "--host", envvar="KFP_HOST"),
                    namespace: str = typer.Option(None, "--namespace", "-n")) -> None:
        """State of one run."""
        from pipelines.run import run_status

        typer.echo(json.dumps(run_status(run_id, host, namespace), indent=2))
