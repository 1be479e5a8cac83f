"""Model registration and promotion in the MLflow model registry.

``register_model`` logs a model artefact as an MLflow pyfunc and registers a version with alias
``challenger``; ``promote_if_better`` moves ``champion`` to it when the configured gate passes.
"""

from vlm.registry.config import GateConfig, RegistryConfig

__all__ = ["GateConfig", "RegistryConfig", "register_model", "promote_if_better", "promote", "list_versions",
           "lineage_tags", "Champion", "Promotion", "Registration"]


def __getattr__(name: str):  # lazy: importing the config must not import mlflow
    if name in {"register_model", "promote_if_better", "promote", "list_versions", "lineage_tags", "Champion",
                "Promotion", "Registration"}:
        from vlm.registry import mlflow_registry

        return getattr(mlflow_registry, name)
    raise AttributeError(name)
