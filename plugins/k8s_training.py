"""The ``kubernetes`` training backend: the trainer as a pod, run by ``KubernetesPodOperator``.

The pod runs the same command as the local backend (``training.launch.trainer_command``) in the
trainer image, with GPUs (``nvidia.com/gpu``), node selector, tolerations, CPU and memory from the
settings (``LIFECYCLE_TRAINER_*``). ``LIFECYCLE_HOME`` is a shared volume (the PVC
``LIFECYCLE_SHARED_VOLUME_CLAIM``) mounted at the same path in Airflow workers and trainer pods, so
the dataset goes in and the adapter, metrics and result come back through it; MLflow and Mongo are
reached by their service addresses from the settings. ``training_pod`` is pure and unit-tested;
only ``kubernetes_launcher`` talks to a cluster.

One node: one pod, ``nproc`` processes (one per GPU), run by ``KubernetesPodOperator``. Several
nodes (``nodes`` > 1): an indexed Job (one pod per node, the same container) and a headless Service
through which every pod reaches pod 0 for torchrun's c10d rendezvous, the shape the Helm chart's
training Job has (``training_job``, pure and unit-tested; ``kubernetes_launcher`` creates them and
follows pod 0's log).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lifecycle.settings import Settings
from training.config import TrainConfig
from training.launch import Launcher, Report, TrainingError, trainer_command

CONTAINER_PYTHON = "python"


def _env(settings: Settings) -> dict[str, str]:
    """Settings the trainer needs, as the environment of the pod. Credentials never go into the pod
    spec: they come from ``LIFECYCLE_TRAINER_ENV_SECRET`` (``envFrom``), or there must be none."""
    from urllib.parse import urlsplit

    secret = settings.trainer_env_secret
    if not secret:
        passwords = {
            "LIFECYCLE_MONGO_URI": urlsplit(settings.mongo_uri).password,
            "MLFLOW_TRACKING_PASSWORD": settings.mlflow_tracking_password,
            "LIFECYCLE_KAFKA_PASSWORD": settings.kafka_password,
        }
        held = [name for name, password in passwords.items() if password]
        if held:
            raise TrainingError(
                f"{', '.join(held)} holds a password that would be written into the training pod's spec; set "
                "LIFECYCLE_TRAINER_ENV_SECRET to the Secret that holds it (the chart's <release>-llm-lifecycle-secrets)"
            )
    return {
        "LIFECYCLE_HOME": str(settings.home),
        **({} if secret else {"LIFECYCLE_MONGO_URI": settings.mongo_uri}),
        "LIFECYCLE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        # The hub cache lives on the shared volume: a model downloaded once serves every pod and rank.
        "HF_HOME": str(settings.home / "huggingface"),
        "HF_HUB_OFFLINE": "1" if settings.hub_offline else "0",
        "LIFECYCLE_DTYPE": settings.dtype,
        "LIFECYCLE_DEVICE": settings.device,
        "PYTHONUNBUFFERED": "1",
    }


def pod_name(run_id: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", f"train-{run_id}".lower())[:63].strip("-")


RDZV_PORT = 29500


def _pod_spec(settings: Settings, command: list[str], nproc: int, subdomain: str | None = None) -> Any:
    """The trainer pod's spec: image, resources (GPUs), env, shared state volume, /dev/shm."""
    from kubernetes.client import models as k8s

    gpus = settings.trainer_gpus
    if gpus and nproc > gpus:
        raise TrainingError(f"nproc={nproc} needs {nproc} GPUs; LIFECYCLE_TRAINER_GPUS={gpus}")
    resources = {"cpu": settings.trainer_cpu, "memory": settings.trainer_memory}
    limits = {**resources, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    container = k8s.V1Container(
        name="trainer",
        image=settings.trainer_image,
        command=command,
        env=[k8s.V1EnvVar(name=k, value=v) for k, v in _env(settings).items()],
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.trainer_env_secret))]
        if settings.trainer_env_secret
        else None,
        resources=k8s.V1ResourceRequirements(requests=resources, limits=limits),
        ports=[k8s.V1ContainerPort(name="rdzv", container_port=RDZV_PORT)] if subdomain else None,
        volume_mounts=[
            k8s.V1VolumeMount(name="state", mount_path=str(settings.home)),
            # torch.distributed workers share tensors through /dev/shm; the default 64 MiB is too small.
            k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
        ],
        security_context=k8s.V1SecurityContext(run_as_non_root=True, allow_privilege_escalation=False),
    )
    return k8s.V1PodSpec(
        restart_policy="Never",
        subdomain=subdomain,
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
    )


def _labels(run_id: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "llm-lifecycle",
        "app.kubernetes.io/component": "trainer",
        "llm-lifecycle/run-id": re.sub(r"[^A-Za-z0-9_.-]", "-", run_id)[:63],
    }


def training_pod(settings: Settings, cfg: TrainConfig, nproc: int, run_id: str) -> Any:
    """The V1Pod of a one-node training run (rendered without a cluster)."""
    from kubernetes.client import models as k8s

    config_path = str(Path(cfg.out_dir) / "launch-config.json")
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=pod_name(run_id), namespace=settings.k8s_namespace, labels=_labels(run_id)),
        spec=_pod_spec(settings, trainer_command(CONTAINER_PYTHON, config_path, nproc), nproc),
    )


def training_job(settings: Settings, cfg: TrainConfig, nproc: int, nnodes: int, run_id: str) -> tuple[Any, Any]:
    """(V1Job, V1Service) of a multi-node run: ``nnodes`` indexed pods meeting at pod 0 (rendered
    without a cluster). Pod ``i`` is ``<name>-i.<name>`` in DNS through the headless Service."""
    from kubernetes.client import models as k8s

    if nnodes < 2:
        raise TrainingError(f"training_job is for several nodes; nodes={nnodes}")
    name = pod_name(run_id)
    config_path = str(Path(cfg.out_dir) / "launch-config.json")
    command = trainer_command(
        CONTAINER_PYTHON, config_path, nproc, nnodes=nnodes, rdzv_endpoint=f"{name}-0.{name}:{RDZV_PORT}", rdzv_id=name
    )
    meta = k8s.V1ObjectMeta(name=name, namespace=settings.k8s_namespace, labels=_labels(run_id))
    job = k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=meta,
        spec=k8s.V1JobSpec(
            completion_mode="Indexed",
            completions=nnodes,
            parallelism=nnodes,
            backoff_limit=0,
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=_labels(run_id)),
                spec=_pod_spec(settings, command, nproc, subdomain=name),
            ),
        ),
    )
    # Headless; publishes pods before they are "ready", since the rendezvous happens before that.
    spec = k8s.V1ServiceSpec(
        cluster_ip="None",
        publish_not_ready_addresses=True,
        selector={"batch.kubernetes.io/job-name": name},
        ports=[k8s.V1ServicePort(name="rdzv", port=RDZV_PORT, target_port=RDZV_PORT)],
    )
    service = k8s.V1Service(api_version="v1", kind="Service", metadata=meta, spec=spec)
    return job, service


def kubernetes_launcher(settings: Settings, run_id: str, context: Any, nnodes: int = 1) -> Launcher:
    """A launcher for ``run_training`` that runs the trainer pod (or the multi-node Job) and waits."""

    def launch(cfg: TrainConfig, nproc: int, out_dir: Path, report: Report) -> None:
        cfg.save(out_dir / "launch-config.json")
        if nnodes > 1:
            _run_job(settings, *training_job(settings, cfg, nproc, nnodes, run_id), report)
            return
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

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


def _run_job(settings: Settings, job: Any, service: Any, report: Report, timeout: float = 7 * 24 * 3600) -> None:
    """Create the Service and the Job, stream pod 0's log, wait for the Job; delete both on success."""
    import time

    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes import client

    api = KubernetesHook().api_client
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    ns, name = settings.k8s_namespace, job.metadata.name
    core.create_namespaced_service(ns, service)
    batch.create_namespaced_job(ns, job)
    report(f"training job {ns}/{name}: {job.spec.completions} pods, rendezvous at {name}-0.{name}:{RDZV_PORT}")
    deadline = time.monotonic() + timeout
    streamed = False
    while time.monotonic() < deadline:
        status = batch.read_namespaced_job_status(name, ns).status
        if not streamed:
            pods = core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={name}").items
            leader = next((p for p in pods if p.metadata.annotations.get(
                "batch.kubernetes.io/job-completion-index") == "0" and p.status.phase in ("Running", "Succeeded",
                                                                                         "Failed")), None)  # fmt: skip
            if leader is not None:
                for line in core.read_namespaced_pod_log(leader.metadata.name, ns, follow=True, _preload_content=False):
                    report(line.decode(errors="replace").rstrip())
                streamed = True
        if status.succeeded and status.succeeded >= job.spec.completions:
            batch.delete_namespaced_job(name, ns, propagation_policy="Background")
            core.delete_namespaced_service(name, ns)
            return
        if status.failed:
            raise TrainingError(f"training job {ns}/{name} failed ({status.failed} pod(s)); kept for inspection")
        time.sleep(5)  # polling the Job's status; the loop ends on its final condition
    raise TrainingError(f"training job {ns}/{name} did not finish within {timeout:.0f} s")
