"""MLflow with authentication: the local MLflow server started by the project's own stack code with
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` runs MLflow's basic-auth app; the project's
clients (registry, artifact upload and download) work with the credentials, a request without them or
with a wrong password is refused, and the health probe stays open."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lifecycle import registry
from lifecycle.settings import Settings, load_settings
from lifecycle.stack import manager

pytestmark = pytest.mark.stack  # a server of its own, next to the test stack


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    password = f"pw-{uuid.uuid4().hex}"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "lifecycle")  # MLflow's clients read these two
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    port = _free_port()
    # the URI named outright: MLflow's fluent API leaves MLFLOW_TRACKING_URI in os.environ (the test stack's)
    s = load_settings(home=tmp_path / "home", mlflow_port=port, mlflow_tracking_uri=f"http://127.0.0.1:{port}")
    assert s.mlflow_tracking_password == password
    assert manager.up(s, ["mlflow"], report=lambda m: None) == ["mlflow"]  # its /health probe is open
    try:
        yield s
    finally:
        manager.down(s, ["mlflow"], report=lambda m: None)


def test_the_local_mlflow_with_a_user_refuses_anonymous_requests_and_serves_the_projects_clients(
    secured: Settings, tmp_path: Path
) -> None:
    s = secured
    search = f"{s.mlflow_tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert httpx.get(search, timeout=10).status_code == 401
    assert httpx.get(search, auth=("lifecycle", "not-it"), timeout=10).status_code == 401
    assert httpx.get(search, auth=("lifecycle", s.mlflow_tracking_password), timeout=10).status_code == 200
    assert httpx.get(f"{s.mlflow_tracking_uri}/health", timeout=10).status_code == 200
    assert "MLFLOW_TRACKING_PASSWORD" not in (s.service_data_dir("mlflow") / "auth.ini").read_text()
    assert s.mlflow_tracking_password not in (s.service_data_dir("mlflow") / "auth.ini").read_text()

    # the registry and the artifact store, as training and the workers use them (a client of its own:
    # the fluent API's global tracking URI would outlive the test)
    mc = registry.client(s.mlflow_tracking_uri)
    (tmp_path / "adapter.txt").write_text("weights")
    run = mc.create_run(mc.create_experiment("auth"))
    mc.log_artifact(run.info.run_id, str(tmp_path / "adapter.txt"), artifact_path="adapter")
    mc.set_terminated(run.info.run_id)
    mc.create_registered_model("secured")
    version = mc.create_model_version("secured", f"runs:/{run.info.run_id}/adapter", run_id=run.info.run_id)
    mc.set_registered_model_alias("secured", registry.CHAMPION, version.version)
    assert registry.version_by_alias(mc, "secured", registry.CHAMPION).version == version.version
    (tmp_path / "down").mkdir()
    got = mc.download_artifacts(run.info.run_id, "adapter", str(tmp_path / "down"))
    assert (Path(got) / "adapter.txt").read_text() == "weights"
