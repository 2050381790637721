"""Settings: defaults, derived addresses, and errors that name the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lifecycle.settings import SettingsError, known_env_vars, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in known_env_vars():
        monkeypatch.delenv(name, raising=False)


def test_defaults_follow_spec(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    s = load_settings()
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.mongo_uri == "mongodb://127.0.0.1:27017/"
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert (s.airflow_port, s.gateway_port, s.worker_port) == (8080, 8000, 50051)
    assert s.home == tmp_path / ".local/share/llm-lifecycle"
    assert s.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert s.model_name == "lifecycle-assistant"
    assert s.api_keys == []


def test_derived_addresses_follow_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFECYCLE_KAFKA_PORT", "19092")
    monkeypatch.setenv("LIFECYCLE_MONGO_PORT", "27018")
    s = load_settings()
    assert s.kafka_bootstrap == "127.0.0.1:19092"
    assert s.kafka_controller_port == 19093
    assert s.mongo_uri == "mongodb://127.0.0.1:27018/"


def test_mlflow_tracking_uri_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert load_settings().mlflow_tracking_uri == "http://mlflow.internal:5000"


def test_api_keys_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFECYCLE_API_KEYS", "k1, k2,,k3 ")
    assert load_settings().api_keys == ["k1", "k2", "k3"]


def test_unknown_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFECYCLE_KAFKA_PROT", "9092")
    with pytest.raises(SettingsError, match="LIFECYCLE_KAFKA_PROT") as err:
        load_settings()
    assert "LIFECYCLE_KAFKA_PORT" in str(err.value)  # the known names help spot the typo


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("LIFECYCLE_KAFKA_PORT", "abc", "LIFECYCLE_KAFKA_PORT: Input should be a valid integer"),
        ("LIFECYCLE_MONGO_PORT", "70000", "LIFECYCLE_MONGO_PORT: Input should be less than or equal to 65535"),
        ("LIFECYCLE_MONGO_BACKEND", "postgres", "LIFECYCLE_MONGO_BACKEND: Input should be 'auto', 'mongod' or"),
        ("LIFECYCLE_WORKERS", "-1", "LIFECYCLE_WORKERS: Input should be greater than or equal to 0"),
        ("LIFECYCLE_LOG_LEVEL", "LOUD", "LIFECYCLE_LOG_LEVEL: Input should be 'DEBUG', 'INFO'"),
    ],
)
def test_invalid_value_names_variable_and_allowed_values(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert expected in str(err.value)
    assert repr(value) in str(err.value)


def test_cli_exits_non_zero_with_one_line_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFECYCLE_MONGO_BACKEND", "postgres")
    done = subprocess.run([sys.executable, "-m", "cli.main", "status"], capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: invalid setting LIFECYCLE_MONGO_BACKEND")
    assert "'ferretdb'" in lines[0]


def test_readme_documents_every_setting() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name in known_env_vars() if f"`{name}`" not in readme]
    assert missing == []
