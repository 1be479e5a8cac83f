"""kfp pipeline definitions (the DAG only; stage logic lives in ``vlm``)."""
