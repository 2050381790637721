"""The kubernetes backend's pod, rendered without a cluster."""

from __future__ import annotations

import pytest

from lifecycle.settings import load_settings
from plugins.k8s_training import pod_name, training_pod
from training.config import TrainConfig
from training.launch import TrainingError


@pytest.fixture
def gpu_settings(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LIFECYCLE_TRAINER_GPUS", "4")
    monkeypatch.setenv("LIFECYCLE_TRAINER_IMAGE", "registry.example/trainer:1.2.3")
    monkeypatch.setenv("LIFECYCLE_TRAINER_NODE_SELECTOR", '{"accelerator": "nvidia-h100"}')
    monkeypatch.setenv(
        "LIFECYCLE_TRAINER_TOLERATIONS", '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]'
    )
    monkeypatch.setenv("LIFECYCLE_HOME", "/var/lib/llm-lifecycle")
    return load_settings()


def test_gpu_pod_runs_torchrun_with_the_settings(gpu_settings) -> None:  # type: ignore[no-untyped-def]
    from kubernetes.client import ApiClient

    cfg = TrainConfig(base_model="/models/llama-3.2-1b", dataset="/var/lib/llm-lifecycle/datasets/ds-1",
                      out_dir="/var/lib/llm-lifecycle/runs/tr-abc")  # fmt: skip
    pod = ApiClient().sanitize_for_serialization(training_pod(gpu_settings, cfg, nproc=4, run_id="tr-abc"))
    spec = pod["spec"]
    (c,) = spec["containers"]
    assert c["image"] == "registry.example/trainer:1.2.3"
    config = "/var/lib/llm-lifecycle/runs/tr-abc/launch-config.json"
    assert c["command"] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                            "-m", "training.finetune", "--config", config]  # fmt: skip
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert c["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}
    assert spec["nodeSelector"] == {"accelerator": "nvidia-h100"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["restartPolicy"] == "Never"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["MLFLOW_TRACKING_URI"] == gpu_settings.mlflow_tracking_uri
    assert env["LIFECYCLE_HOME"] == "/var/lib/llm-lifecycle"
    assert env["HF_HOME"] == "/var/lib/llm-lifecycle/huggingface"  # on the shared volume
    assert env["HF_HUB_OFFLINE"] == "1" and env["LIFECYCLE_DTYPE"] == "auto"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"state": "/var/lib/llm-lifecycle", "dshm": "/dev/shm"}
    claim = next(v for v in spec["volumes"] if v["name"] == "state")["persistentVolumeClaim"]["claimName"]
    assert claim == "llm-lifecycle-state"
    assert c["securityContext"]["runAsNonRoot"] is True
    assert pod["metadata"]["labels"]["llm-lifecycle/run-id"] == "tr-abc"


def test_cpu_pod_has_no_gpu_and_one_process_runs_plain_python(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.client import ApiClient

    cfg = TrainConfig(out_dir="/state/runs/tr-x")
    pod = ApiClient().sanitize_for_serialization(training_pod(load_settings(), cfg, nproc=1, run_id="tr-x"))
    (c,) = pod["spec"]["containers"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert c["command"][:3] == ["python", "-m", "training.finetune"]
    assert "nodeSelector" not in pod["spec"] and "tolerations" not in pod["spec"]


def test_pods_may_reach_the_hub_when_the_cluster_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    from lifecycle.settings import load_settings
    from plugins.k8s_training import _env

    monkeypatch.setenv("LIFECYCLE_HUB_OFFLINE", "false")
    assert _env(load_settings())["HF_HUB_OFFLINE"] == "0"


def test_credentials_reach_a_pod_through_its_secret_and_never_through_its_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.client import ApiClient

    from lifecycle.settings import load_settings

    cfg = TrainConfig(out_dir="/state/runs/tr-s")
    monkeypatch.setenv("LIFECYCLE_MONGO_URI", "mongodb://lifecycle:mongo-pw-1@mongo:27017/?authSource=admin")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "lifecycle")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mlflow-pw-1")
    with pytest.raises(TrainingError, match=r"LIFECYCLE_MONGO_URI, MLFLOW_TRACKING_PASSWORD holds a password .* set "
                       "LIFECYCLE_TRAINER_ENV_SECRET"):  # fmt: skip
        training_pod(load_settings(), cfg, nproc=1, run_id="tr-s")
    monkeypatch.setenv("LIFECYCLE_TRAINER_ENV_SECRET", "lifecycle-llm-lifecycle-secrets")
    pod = ApiClient().sanitize_for_serialization(training_pod(load_settings(), cfg, nproc=1, run_id="tr-s"))
    (c,) = pod["spec"]["containers"]
    assert c["envFrom"] == [{"secretRef": {"name": "lifecycle-llm-lifecycle-secrets"}}]
    assert "pw-1" not in str(pod) and "LIFECYCLE_MONGO_URI" not in {e["name"] for e in c["env"]}


def test_more_processes_than_gpus_is_refused(gpu_settings) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TrainingError, match="nproc=8 needs 8 GPUs; LIFECYCLE_TRAINER_GPUS=4"):
        training_pod(gpu_settings, TrainConfig(out_dir="/x"), nproc=8, run_id="tr-y")
    assert pod_name("tr_ABC.1") == "train-tr-abc-1"


def test_several_nodes_give_an_indexed_job_meeting_at_pod_0_through_a_headless_service(gpu_settings) -> None:  # type: ignore[no-untyped-def]
    import kubernetes_validate
    from kubernetes.client import ApiClient

    from plugins.k8s_training import training_job

    cfg = TrainConfig(out_dir="/var/lib/llm-lifecycle/runs/tr-multi")
    job_obj, svc_obj = training_job(gpu_settings, cfg, nproc=4, nnodes=3, run_id="tr-multi")
    job, svc = (ApiClient().sanitize_for_serialization(o) for o in (job_obj, svc_obj))
    for doc in (job, svc):
        kubernetes_validate.validate(doc, "1.31.0", strict=True)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] == job["metadata"]["name"] == "train-tr-multi"
    (c,) = pod["containers"]
    assert c["command"] == [
        "python", "-m", "torch.distributed.run", "--nnodes=3", "--nproc-per-node=4", "--rdzv-backend=c10d",
        "--rdzv-endpoint=train-tr-multi-0.train-tr-multi:29500", "--rdzv-id=train-tr-multi",
        "-m", "training.finetune", "--config", "/var/lib/llm-lifecycle/runs/tr-multi/launch-config.json",
    ]  # fmt: skip
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4" and c["image"] == "registry.example/trainer:1.2.3"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": "train-tr-multi"}
    with pytest.raises(TrainingError, match="several nodes"):
        training_job(gpu_settings, cfg, nproc=4, nnodes=1, run_id="tr-one")


def test_several_nodes_on_the_local_backend_are_refused() -> None:
    from plugins.pipeline import PipelineError, fine_tune

    with pytest.raises(PipelineError, match=r"params\.nodes is 2: several nodes need backend 'kubernetes'"):
        fine_tune("ds-x", {"backend": "local", "nodes": 2, "model_name": "m"}, "run-1")
