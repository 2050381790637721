"""Shared fixtures: the real local stack on test ports, brought up once per session by the same code
as `lifecycle up`, and the models the tests use (the pulled SmolLM2 and a tiny random Llama).

The test stack lives in its own state dir and ports, so a developer's running stack is untouched;
services this session started are stopped at the end, the ones it found running are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle.settings import Settings, load_settings

# Below Linux's ephemeral range (32768-60999): a client retrying a port that is down can otherwise
# connect to itself there, and the TIME-WAIT it leaves blocks the server from binding the port.
TEST_PORTS = {
    "LIFECYCLE_KAFKA_PORT": "19092",
    "LIFECYCLE_MONGO_PORT": "17017",
    "LIFECYCLE_MLFLOW_PORT": "15000",
    "LIFECYCLE_AIRFLOW_PORT": "18080",
}


def _test_home() -> Path:
    base = Settings.model_fields["cache_dir"].default_factory()  # type: ignore[misc, call-arg]
    return Path(base) / "test-stack"


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    """LIFECYCLE_* variables of the test stack, set for the whole session (subprocesses inherit them)."""
    # Tests give each Kafka-triggered run its own tiny model, registered name and promotion margin (an
    # operator's opt-in).
    env = {
        "LIFECYCLE_HOME": str(_test_home()),
        "LIFECYCLE_EVENT_PARAMS": "base_model,model_name,promotion_margin",
        # curation only when a test asks for it: pending test feedback must not train the default model
        "LIFECYCLE_CURATE_SCHEDULE": "",
        "LIFECYCLE_CURATE_MIN_FEEDBACK": "1000000",
        # scheduled DAGs only where a test unpauses them (a Sunday 03:00 CI must not retrain mid-suite)
        "LIFECYCLE_DAGS_PAUSED": "true",
        # failed DAG runs mail here; tests/dags/test_notify.py listens (elsewhere the refused mail is logged)
        "LIFECYCLE_NOTIFY_EMAIL": "ops@lifecycle.test",
        "LIFECYCLE_SMTP_URL": "smtp://127.0.0.1:18025",
        "LIFECYCLE_RETRY_DELAY": "2",  # a task failing on purpose is retried within seconds
        "LIFECYCLE_RETRAIN_SCHEDULE": "* * * * *",  # fires only while tests/dags/test_retrain_schedule.py unpauses it
        **TEST_PORTS,
    }
    with pytest.MonkeyPatch.context() as mp:
        # A developer's own settings must not point the tests at their stack; the cache is shared.
        for name in [k for k in os.environ if k.startswith("LIFECYCLE_") or k == "MLFLOW_TRACKING_URI"]:
            if name != "LIFECYCLE_CACHE_DIR":
                mp.delenv(name)
        for key, value in env.items():
            mp.setenv(key, value)
        yield env


@pytest.fixture(scope="session")
def stack_settings(stack_env: dict[str, str]) -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def stack(stack_settings: Settings) -> Iterator[Settings]:
    """The running local stack (Kafka, MongoDB, MLflow, Airflow) on the test ports."""
    import shutil

    from lifecycle.stack import manager, process

    (kafka,) = manager.select(stack_settings, ["kafka"])
    if process.read_pid(kafka.pidfile) is None:
        # This session starts the broker: its topics start empty. Messages of earlier sessions left
        # uncommitted (a triggerer killed by the fault tests) would be replayed to the asset watchers,
        # one per trigger cycle (~2 s each), ahead of this session's, for minutes.
        shutil.rmtree(kafka.data_dir / "logs", ignore_errors=True)
    started = manager.up(stack_settings, report=lambda m: print(f"[stack] {m}"))
    yield stack_settings
    if started:
        manager.down(stack_settings, started, report=lambda m: print(f"[stack] {m}"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct materialised from the shipped GGUF (cached after the first session)."""
    from training.base_model import pull_default_model

    return pull_default_model(load_settings().models_dir, report=print).path


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random 2-layer Llama with SmolLM2's tokenizer, built on the fly."""
    from training.base_model import build_tiny_llama

    return build_tiny_llama(smollm2_dir, tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def toy_dataset(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped toy dataset ingested into a temporary datasets dir."""
    from transformers import AutoTokenizer

    from training.ingest import ingest

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    root = tmp_path_factory.mktemp("datasets")
    ds = ingest(
        REPO / "data/toy/train.jsonl", root, name="toy", eval_source=REPO / "data/toy/eval.jsonl", tokenizer=tok
    )
    return ds.path
