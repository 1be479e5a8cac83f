"""MLflow "models from code" entry point: the registered pyfunc is this file, not a pickled object.

MLflow runs it when loading the model; it only needs the ``vlm`` package installed (pinned in the model's
requirements). See :mod:`vlm.models.pyfunc` for the input/output contract.
"""

import mlflow.models

from vlm.models.pyfunc import VLMPyfunc

mlflow.models.set_model(VLMPyfunc())
