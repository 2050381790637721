"""The ``kubernetes`` training backend: the trainer as a pod, run by ``KubernetesPodOperator``.

The pod runs the same command as the local backend (``training.train.trainer_command``) in the
trainer image, with GPUs (``nvidia.com/gpu``), node selector, tolerations, CPU and memory from the
settings (``LIFECYCLE_TRAINER_*``). ``LIFECYCLE_HOME`` is a shared volume (the PVC
``LIFECYCLE_SHARED_VOLUME_CLAIM``) mounted at the same path in Airflow workers and trainer pods, so
the dataset goes in and the adapter, metrics and result come back through it; MLflow and Mongo are
reached by their service addresses from the settings. ``training_pod`` is pure and unit-tested;
only ``kubernetes_launcher`` talks to a cluster.

Multi-node training (a pod set with a rendezvous Service) is not rendered here yet: one pod, one
node, ``nproc`` processes (one per GPU).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lifecycle.settings import Settings
from training.config import TrainConfig
from training.train import Launcher, Report, TrainingError, trainer_command

CONTAINER_PYTHON = "python"


def _env(settings: Settings) -> dict[str, str]:
    """Settings the trainer needs, as the environment of the pod."""
    return {
        "LIFECYCLE_HOME": str(settings.home),
        "LIFECYCLE_MONGO_URI": settings.mongo_uri,
        "LIFECYCLE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def pod_name(run_id: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", f"train-{run_id}".lower())[:63].strip("-")


def training_pod(settings: Settings, cfg: TrainConfig, nproc: int, run_id: str) -> Any:
    """The V1Pod of one training run (rendered without a cluster)."""
    from kubernetes.client import models as k8s

    gpus = settings.trainer_gpus
    if gpus and nproc > gpus:
        raise TrainingError(f"nproc={nproc} needs {nproc} GPUs; LIFECYCLE_TRAINER_GPUS={gpus}")
    resources = {"cpu": settings.trainer_cpu, "memory": settings.trainer_memory}
    limits = {**resources, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    config_path = str(Path(cfg.out_dir) / "launch-config.json")
    container = k8s.V1Container(
        name="trainer",
        image=settings.trainer_image,
        command=trainer_command(CONTAINER_PYTHON, config_path, nproc),
        env=[k8s.V1EnvVar(name=k, value=v) for k, v in _env(settings).items()],
        resources=k8s.V1ResourceRequirements(requests=resources, limits=limits),
        volume_mounts=[
            k8s.V1VolumeMount(name="state", mount_path=str(settings.home)),
            # torch.distributed workers share tensors through /dev/shm; the default 64 MiB is too small.
            k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
        ],
        security_context=k8s.V1SecurityContext(run_as_non_root=True, allow_privilege_escalation=False),
    )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=pod_name(run_id),
            namespace=settings.k8s_namespace,
            labels={
                "app.kubernetes.io/name": "llm-lifecycle",
                "app.kubernetes.io/component": "trainer",
                "llm-lifecycle/run-id": run_id,
            },
        ),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            containers=[container],
            node_selector=settings.trainer_node_selector or None,
            tolerations=[k8s.V1Toleration(**t) for t in settings.trainer_tolerations] or None,
            volumes=[
                k8s.V1Volume(
                    name="state",
                    persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                        claim_name=settings.shared_volume_claim
                    ),
                ),
                k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory")),
            ],
        ),
    )


def kubernetes_launcher(settings: Settings, run_id: str, context: Any) -> Launcher:
    """A launcher for ``run_training`` that runs the trainer pod and waits for it."""

    def launch(cfg: TrainConfig, nproc: int, out_dir: Path, report: Report) -> None:
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        cfg.save(out_dir / "launch-config.json")
        pod = training_pod(settings, cfg, nproc, run_id)
        operator = KubernetesPodOperator(
            task_id=f"{context['ti'].task_id}-pod",
            full_pod_spec=pod,
            namespace=settings.k8s_namespace,
            get_logs=True,  # the trainer's output becomes the task log
            on_finish_action="delete_succeeded_pod",
        )
        try:
            operator.execute(context)
        except Exception as exc:
            raise TrainingError(f"training pod {pod.metadata.name} failed: {exc}") from exc

    return launch
