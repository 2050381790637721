"""The DAG params' one schema, and what a Kafka event may override."""

from __future__ import annotations

import pytest

from plugins.params import EVENT_PARAMS, PIPELINE, SCHEMA, ParamsError, check_event_params, form


def test_an_event_may_set_the_training_recipe() -> None:
    raw = {"epochs": 2, "dtype": "float32", "attention": "sdpa", "target_modules": ["q_proj", "v_proj"], "nproc": 2.0}
    got = check_event_params(raw)
    assert got == {
        "epochs": 2,
        "dtype": "float32",
        "attention": "sdpa",
        "target_modules": "q_proj,v_proj",
        "nproc": 2.0,
    }
    assert check_event_params({"target_modules": "all-linear"}) == {"target_modules": "all-linear"}
    assert check_event_params(None) == {}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"promotion_margin": -1}, "params.promotion_margin may not be set by an event"),
        ({"model_name": "other"}, "params.model_name may not be set by an event"),
        ({"backend": "kubernetes"}, "params.backend may not be set"),
        ({"nproc": 500}, "params.nproc: 500 is greater than the maximum of 64"),
        ({"dtype": "float16"}, "params.dtype: 'float16' is not one of"),
        ({"epochs": "many"}, "params.epochs: 'many' is not of type 'number'"),
        ({"lora_r": True}, "params.lora_r: True is not of type 'integer'"),
        ({"target_modules": "q_proj;rm -rf"}, "params.target_modules: 'q_proj;rm -rf' does not match"),
        ([1, 2], "params must be an object, got list"),
    ],
)
def test_an_event_cannot_set_the_gate_or_go_outside_the_schema(params: object, message: str) -> None:
    with pytest.raises(ParamsError, match=message.replace("(", r"\(")):
        check_event_params(params)


def test_an_operator_can_let_events_set_more() -> None:
    assert check_event_params({"model_name": "m-1"}, extra=["model_name"]) == {"model_name": "m-1"}
    with pytest.raises(ParamsError, match=r"params.model_name: '\.\./x' does not match"):
        check_event_params({"model_name": "../x"}, extra=["model_name"])
    with pytest.raises(ParamsError, match=r"params\.base_model may not be set"):
        check_event_params({"base_model": "/etc"}, extra=["model_name", "not_a_param"])


def test_every_pipeline_and_event_param_has_a_schema_with_a_valid_default() -> None:
    import jsonschema

    assert set(PIPELINE) <= set(SCHEMA) and set(SCHEMA) >= EVENT_PARAMS
    for name, spec in SCHEMA.items():
        schema = {k: v for k, v in spec.items() if k not in ("default", "title", "description")}
        jsonschema.validate(spec["default"], schema)
        assert spec.get("title"), name


def test_optional_params_accept_null_and_a_form_with_only_the_data_validates() -> None:
    """Airflow's trigger form submits an empty field of a nullable param as null (an empty ``string``
    param keeps the Trigger button disabled); the run's params must then validate as they are."""
    from airflow.sdk.definitions.param import ParamsDict

    optional = [n for n, spec in SCHEMA.items() if "null" in spec["type"]]
    assert {"eval_path", "base_model", "model_name", "rollout_policy"} <= set(optional)
    params = ParamsDict(form("dataset_path", "eval_path", "dataset_name", "base_model", *PIPELINE))
    params["dataset_path"] = "/data/train.jsonl"
    resolved = params.validate()
    assert resolved["eval_path"] is None and resolved["base_model"] is None and resolved["epochs"] == 5.0
    with pytest.raises(ValueError, match="param model_name"):
        ParamsDict(form("model_name", model_name="../x")).validate()
