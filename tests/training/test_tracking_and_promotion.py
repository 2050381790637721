"""Training tracked in MLflow and Mongo, evaluation, and the champion/challenger gate with Kafka,
on the tiny model against the real stack."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lifecycle import registry, topics
from lifecycle.settings import Settings, load_settings
from lifecycle.store import EVALUATIONS, MODEL_CONFIGS, TRAINING_RUNS, Store
from tests.kafka_read import read_topic
from training.config import TrainConfig
from training.evaluate import evaluate
from training.launch import TrainingError, run_training
from training.promote import PromotionError, decide, promote, rollback

pytestmark = pytest.mark.stack


@pytest.fixture
def model_settings(stack: Settings) -> Settings:
    """The test stack with a registered-model name of this test's own."""
    return load_settings(model_name=f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def store(stack: Settings) -> Iterator[Store]:
    with Store.connect(stack) as s:
        yield s


def tiny_cfg(tiny_llama_dir: Path, toy_dataset: Path, **kw: object) -> TrainConfig:
    base = {"base_model": str(tiny_llama_dir), "dataset": str(toy_dataset), "max_steps": 3, "checkpoint_every": 0,
            "micro_batch_size": 16, "dtype": "float32"}  # fmt: skip
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def model_events(settings: Settings) -> list[dict]:
    """Every event on lifecycle.model-events for this settings' model name."""
    return read_topic(settings, topics.MODEL_EVENTS, lambda msg, _v: msg.key() == settings.model_name.encode())


def mlflow_table(settings: Settings, run_id: str, name: str) -> dict:
    """A table artifact (``mlflow.log_table``) of a run, as its JSON: {"columns": [...], "data": [...]}."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return dict(mlflow.artifacts.load_dict(f"runs:/{run_id}/{name}"))


def assert_png(settings: Settings, run_id: str, path: str) -> None:
    """The run has a figure at ``path``: a PNG image of a real size (not an empty canvas)."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    data = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{path}")).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, (path, len(data))


def test_a_run_is_tracked_from_queued_to_succeeded(
    model_settings: Settings, store: Store, tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path
) -> None:
    import mlflow

    run = run_training(model_settings, tiny_cfg(tiny_llama_dir, toy_dataset, out_dir=str(tmp_path)), store=store)
    doc = store.get(TRAINING_RUNS, run.run_id)
    assert doc is not None and doc["status"] == "succeeded" and doc["mlflow_run_id"] == run.mlflow_run_id
    mc = registry.client(model_settings.mlflow_tracking_uri)
    mlrun = mc.get_run(run.mlflow_run_id)
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["lora_r"] == "16" and mlrun.data.tags["dataset_id"] == toy_dataset.name
    assert len(mc.get_metric_history(run.mlflow_run_id, "loss")) == 3  # batched, flushed at the end
    # the dataset version as the run's inputs, and the training curves as a picture
    inputs = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
              for i in mlrun.inputs.dataset_inputs}  # fmt: skip
    assert inputs["training"].name == toy_dataset.name and inputs["eval"].name == f"{toy_dataset.name}/eval"
    assert inputs["training"].digest == hashlib.sha256((toy_dataset / "train.jsonl").read_bytes()).hexdigest()[:16]
    assert str(toy_dataset / "train.jsonl") in inputs["training"].source
    assert_png(model_settings, run.mlflow_run_id, "figures/training_curves.png")
    # the CLI's --run takes the training run id as well as the MLflow one
    from training.steps import StepError, mlflow_run_id

    assert mlflow_run_id(store, run.run_id) == run.mlflow_run_id == mlflow_run_id(store, run.mlflow_run_id)
    with pytest.raises(StepError, match="tr-nosuchrun"):
        mlflow_run_id(store, "tr-nosuchrun")
    assert any(k.startswith("sha256.") for k in mlrun.data.tags)
    mlflow.set_tracking_uri(model_settings.mlflow_tracking_uri)
    loaded = mlflow.pyfunc.load_model(run.model_uri)  # base + adapter in one call
    assert isinstance(loaded.predict(["What is the capital of Thandfusnu?"], params={"max_new_tokens": 3})[0], str)
    # Evaluation loads it verified, in the settings' dtype; the registry's tags are not what it trusts.
    from lifecycle.digests import DIGESTS, DigestError, legacy_tags
    from training.evaluate import load_verified

    # A run trained before records were kept (no record, only sha256.* tags): refused without its tags;
    # with them it loads once if the files match, and every file is recorded then (marked legacy).
    store.db[DIGESTS].delete_one({"_id": run.mlflow_run_id})
    with pytest.raises(DigestError, match="has no artifact record"):
        load_verified(model_settings, store, run.model_uri, run.mlflow_run_id, "old")
    wrong = {**legacy_tags(mlrun.data.tags), "adapter_model.safetensors": "0" * 64}
    with pytest.raises(DigestError, match=r"old: sha256 of adapter_model\.safetensors is"):
        load_verified(model_settings, store, run.model_uri, run.mlflow_run_id, "old", wrong)
    load_verified(model_settings, store, run.model_uri, run.mlflow_run_id, "old", legacy_tags(mlrun.data.tags))
    assert store.get(DIGESTS, run.mlflow_run_id)["legacy"] is True
    mc.set_tag(run.mlflow_run_id, "sha256.adapter_config.json", "0" * 64)
    for dtype in ("float32", "bfloat16"):
        s = model_settings.model_copy(update={"dtype": dtype})
        model, _ = load_verified(s, store, run.model_uri, run.mlflow_run_id, "the candidate")
        assert next(model.parameters()).dtype == getattr(torch, dtype)
    # An edit of any file of the adapter in the artifact store (here its config) is refused by name.
    model_id = run.model_uri.split("/")[-1]
    configs = list((model_settings.home / "data").rglob(f"*{model_id}*/**/adapter/adapter_config.json"))
    assert len(configs) == 1, configs
    configs[0].write_text(configs[0].read_text().replace('"lora_alpha"', '"lora_alpha_"'))
    with pytest.raises(DigestError, match=r"the candidate: sha256 of adapter_config\.json is"):
        load_verified(model_settings, store, run.model_uri, run.mlflow_run_id, "the candidate")


def test_a_crash_marks_the_run_failed_everywhere(
    model_settings: Settings, store: Store, tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path
) -> None:
    # A global batch larger than the dataset: the training process raises after it started.
    cfg = tiny_cfg(tiny_llama_dir, toy_dataset, out_dir=str(tmp_path), global_batch_size=4096, micro_batch_size=16)
    with pytest.raises(TrainingError, match="training exited with code 1") as err:
        run_training(model_settings, cfg, store=store, run_id=f"tr-crash-{uuid.uuid4().hex[:6]}")
    assert "do not fill one global batch" in str(err.value)
    doc = store.db[TRAINING_RUNS].find_one({"out_dir": str(tmp_path)})
    assert doc is not None and doc["status"] == "failed" and "do not fill one global batch" in doc["error"]
    mc = registry.client(model_settings.mlflow_tracking_uri)
    assert mc.get_run(doc["mlflow_run_id"]).info.status == "FAILED"
    assert registry.version_by_alias(mc, model_settings.model_name, "champion") is None


def test_unknown_base_model_fails_before_any_work(
    model_settings: Settings, store: Store, toy_dataset: Path, tmp_path: Path
) -> None:
    cfg = TrainConfig(base_model=str(tmp_path / "no-such-model"), dataset=str(toy_dataset), out_dir=str(tmp_path / "o"))
    with pytest.raises(TrainingError, match="neither a local folder nor a model that can be loaded"):
        run_training(model_settings, cfg, store=store)
    assert store.db[TRAINING_RUNS].count_documents({"out_dir": str(tmp_path / "o")}) == 0


def test_gate_evaluate_promote_rerun_kafka_down_and_rollback(
    model_settings: Settings, store: Store, tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path
) -> None:
    s = model_settings
    first = run_training(s, tiny_cfg(tiny_llama_dir, toy_dataset, out_dir=str(tmp_path / "a")), store=store)
    report = evaluate(s, store, first.mlflow_run_id, limit=8, max_new_tokens=4)
    assert report["baseline"]["kind"] == "base" and report["items"] == 8
    metrics = {"accuracy", "exact_match", "token_f1", "rouge_l", "score", "perplexity"}
    assert set(report["candidate"]["metrics"]) == metrics and set(report["baseline"]["metrics"]) == metrics
    assert report["gate_metric"] == "accuracy" and report["binary"]  # every toy eval item has a short answer
    assert len(report["scores"]["candidate"]) == len(report["scores"]["baseline"]) == 8
    assert store.db[EVALUATIONS].count_documents({"candidate.run_id": first.mlflow_run_id}) == 1
    table = mlflow_table(s, first.mlflow_run_id, "eval_items.json")
    assert len(table["data"]) == 8 and {"candidate_score", "baseline_loss"} <= set(table["columns"])
    assert_png(s, first.mlflow_run_id, "figures/evaluation.png")

    # A random tiny model cannot beat the base model by a margin: it stays challenger, nothing published.
    res = promote(s, store, first.mlflow_run_id, margin=0.5)
    assert (res.alias, res.promoted) == ("challenger", False)
    assert res.gate["n"] == 8 and res.gate["test"] == "mcnemar-exact" and res.gate["ci_low"] <= res.gate["ci_high"]
    v1 = registry.client(s.mlflow_tracking_uri).get_model_version(s.model_name, "1")
    version_tags = v1.tags
    assert f"`{toy_dataset.name}`" in v1.description and "Gate: keep as challenger" in v1.description
    assert version_tags["lifecycle.gate.n"] == "8" and "lifecycle.gate.p_value" in version_tags
    mc = registry.client(s.mlflow_tracking_uri)
    assert registry.version_by_alias(mc, s.model_name, "champion") is None
    assert [e["type"] for e in model_events(s)] == ["ModelRegistered"]

    # With Kafka unreachable the alias must not move, and the command says so.
    dead = load_settings(model_name=s.model_name, kafka_bootstrap="127.0.0.1:1")
    with pytest.raises(PromotionError, match="champion NOT moved"):
        promote(dead, store, first.mlflow_run_id, margin=-1.0)
    assert registry.version_by_alias(mc, s.model_name, "champion") is None
    outbox = store.db[MODEL_CONFIGS].find_one({"model_name": s.model_name, "version": 1, "state": {"$exists": True}})
    assert outbox is not None and outbox["state"] == "pending"

    # Re-run with Kafka: the queued event (same id) goes out and the alias moves.
    done = promote(s, store, first.mlflow_run_id, margin=-1.0)
    assert (done.alias, done.version, done.event_id) == ("champion", 1, outbox["event_id"])
    assert registry.version_by_alias(mc, s.model_name, "champion").version == "1"
    assert registry.version_by_alias(mc, s.model_name, "challenger") is None  # v1 is no longer both
    promoted = [e for e in model_events(s) if e["type"] == "ModelPromoted"]
    assert len(promoted) == 1
    assert {"event_id", "type", "occurred_at", "model_name", "version", "alias", "run_id", "metrics"} <= set(
        promoted[0]
    )
    assert promoted[0]["version"] == 1 and promoted[0]["run_id"] == first.mlflow_run_id
    assert promoted[0]["digests"]
    assert promoted[0]["gate"]["n"] == 8 and promoted[0]["gate"]["margin"] == -1.0
    registered = [e for e in model_events(s) if e["type"] == "ModelRegistered"]
    assert registered[0]["gate"]["test"] == "mcnemar-exact"

    # Promoting the same version again changes nothing and publishes nothing.
    again = promote(s, store, first.mlflow_run_id, margin=-1.0)
    assert again.already_done
    assert len([e for e in model_events(s) if e["type"] == "ModelPromoted"]) == 1

    # A second champion, then roll back to the first.
    second = run_training(s, tiny_cfg(tiny_llama_dir, toy_dataset, out_dir=str(tmp_path / "b"), seed=1), store=store)
    evaluate(s, store, second.mlflow_run_id, limit=4, max_new_tokens=2)
    assert promote(s, store, second.mlflow_run_id, margin=-1.0).version == 2
    back = rollback(s, store)
    assert back.version == 1
    assert registry.version_by_alias(mc, s.model_name, "champion").version == "1"
    rolled = [e for e in model_events(s) if e["type"] == "ModelRolledBack"]
    assert len(rolled) == 1 and rolled[0]["from_version"] == 2 and rolled[0]["version"] == 1
    with pytest.raises(PromotionError, match="only champion it has had"):
        rollback(s, store)
    # Promoting v2 again on its old evaluation says what happened instead of reporting a move it did not make.
    with pytest.raises(PromotionError, match="version 2 was promoted on this evaluation and is not champion now"):
        promote(s, store, second.mlflow_run_id, margin=-1.0)
    # A third run evaluated against v1 cannot be promoted once the champion moved (to v2, again) meanwhile.
    third = run_training(s, tiny_cfg(tiny_llama_dir, toy_dataset, out_dir=str(tmp_path / "c"), seed=2), store=store)
    evaluate(s, store, third.mlflow_run_id, limit=4, max_new_tokens=2)
    evaluate(s, store, second.mlflow_run_id, limit=4, max_new_tokens=2)
    assert promote(s, store, second.mlflow_run_id, margin=-1.0).version == 2
    with pytest.raises(PromotionError, match="champion is v2 now, but version 3 was evaluated against v1: champion"):
        promote(s, store, third.mlflow_run_id, margin=-1.0)
    assert registry.version_by_alias(mc, s.model_name, "champion").version == "2"


def test_gate_decision_is_a_pure_function() -> None:
    def evaluation(cand: list[float], base: list[float], ppl_c: float = 5.0) -> dict:
        return {
            "scores": {"candidate": cand, "baseline": base},
            "binary": True,
            "gate_metric": "accuracy",
            "candidate": {"metrics": {"perplexity": ppl_c}},
            "baseline": {"metrics": {"perplexity": 20.0}},
        }

    clear = evaluation([1.0] * 20, [0.0] * 20)
    assert decide(clear, margin=0.05, tolerance=0.25).promote
    one_item = evaluation([1.0] + [0.0] * 19, [0.0] * 20)  # +0.05 on 20 items: not evidence
    assert not decide(one_item, margin=0.0, tolerance=0.25).promote
    worse = decide(evaluation([1.0] * 20, [0.0] * 20, ppl_c=30.0), margin=0.05, tolerance=0.25)
    assert not worse.promote and "perplexity" in worse.reason
    with pytest.raises(PromotionError, match="no per-item scores"):
        decide({"candidate": {"metrics": {}}, "baseline": {"metrics": {}}}, margin=0, tolerance=0.25)
