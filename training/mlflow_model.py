"""The MLflow model of a fine-tuning run: base model + LoRA adapter, loaded in one call.

Logged as "models from code" (this file is the model; nothing is pickled):

    model = mlflow.pyfunc.load_model("models:/lifecycle-assistant@champion")
    model.predict(["What is the capital of Thandfusnu?"])

The adapter travels as an artifact (safetensors); the base model is named in the model config
(a local folder such as the model cache, or a hub id) and loaded from there, on the device and in
the dtype the shared policy picks (override with ``model_config={"dtype": ..., "device": ...}``).
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class LoraChatModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from training.generation import load_model

        self.config = dict(context.model_config or {})
        self.model, self.tokenizer = load_model(
            self.config["base_model"], context.artifacts["adapter"],
            dtype=str(self.config.get("dtype") or "auto"), device=str(self.config.get("device") or "auto"),
        )  # fmt: skip

    # model_input is annotated as a DataFrame, a type MLflow infers no schema from (Any or no hint
    # make it warn on every log and load); the schema is the signature logged with the model, and
    # plain lists and strings are accepted too.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        from training.generation import generate

        if hasattr(model_input, "to_dict"):  # a DataFrame with a 'prompt' column
            prompts = list(model_input["prompt"] if "prompt" in model_input else model_input.iloc[:, 0])
        else:
            prompts = [model_input] if isinstance(model_input, str) else list(model_input)
        max_new = int((params or {}).get("max_new_tokens", 64))
        conversations = [[{"role": "user", "content": str(p)}] for p in prompts]
        return generate(self.model, self.tokenizer, conversations, max_new_tokens=max_new)


mlflow.models.set_model(LoraChatModel())
