"""llm_lifecycle: ingest -> validate -> fine_tune -> evaluate -> promote -> notify.

Trigger it from the UI (the trigger dialog shows the form below) or the REST API with a JSON
``conf``. Tasks pass ids through XCom (dataset id, MLflow run id, model version), never data; every
task is idempotent for the same inputs, so a retry neither duplicates a registry version nor a
Mongo document. The task bodies live in ``plugins/pipeline.py`` over the ``training`` functions.
"""

from __future__ import annotations

from airflow.sdk import Param, get_current_context, task

from plugins.lifecycle_tasks import lifecycle_dag, train_and_promote

PARAMS = {
    "dataset_path": Param("", type="string", title="Training data",
                          description="JSONL (chat or instruction records): a path or file:// URI on the workers."),
    "eval_path": Param("", type="string", title="Held-out eval data",
                       description="Optional JSONL of eval questions; empty: 10 % of the training data."),
    "dataset_name": Param("dataset", type="string", minLength=1, title="Dataset name"),
    "base_model": Param("", type="string", title="Base model",
                        description="Hub id or local folder; empty: LIFECYCLE_BASE_MODEL (SmolLM2-135M-Instruct)."),
    "lora_r": Param(16, type="integer", minimum=1, maximum=256, title="LoRA rank"),
    "lora_alpha": Param(32, type="integer", minimum=1, maximum=1024, title="LoRA alpha"),
    "lora_dropout": Param(0.0, type="number", minimum=0, maximum=0.5, title="LoRA dropout"),
    "epochs": Param(5.0, type="number", exclusiveMinimum=0, maximum=100, title="Epochs"),
    "learning_rate": Param(2e-3, type="number", exclusiveMinimum=0, maximum=1, title="Learning rate"),
    "max_steps": Param(0, type="integer", minimum=0, title="Max steps",
                       description="Stop after this many optimizer steps (0: run the epochs)."),
    "nproc": Param(1, type="integer", minimum=1, maximum=64, title="Processes",
                   description="torchrun --nproc-per-node (GPUs per pod on Kubernetes)."),
    "backend": Param("local", type="string", enum=["local", "kubernetes"], title="Training backend"),
    "nodes": Param(1, type="integer", minimum=1, maximum=64, title="Nodes",
                   description="Training nodes; more than 1 runs an indexed Job of that many pods (kubernetes)."),
    "promotion_margin": Param(0.0, type="number", minimum=-1, maximum=1, title="Promotion margin",
                              description="Accuracy the candidate must gain over the champion."),
    "eval_limit": Param(0, type="integer", minimum=0, title="Eval items", description="0: the whole eval split."),
}  # fmt: skip


@lifecycle_dag("llm_lifecycle", schedule=None, tags=["training"], doc=__doc__, max_active_runs=1, params=PARAMS)
def llm_lifecycle() -> None:
    @task(retries=0)  # bad data does not get better on retry
    def ingest() -> str:
        from plugins import pipeline

        ctx = get_current_context()
        records = (ctx["dag_run"].conf or {}).get("records")
        return pipeline.ingest(dict(ctx["params"]), records=records)

    train_and_promote(ingest())


llm_lifecycle_dag = llm_lifecycle()
