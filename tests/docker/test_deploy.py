"""docker/ checked offline: the Helm chart lints, renders for the default and the GPU values into
manifests valid against the Kubernetes schemas, refuses bad values with the field named; its settings
are valid llm-lifecycle settings from which the Airflow backend renders the chart's trainer pod; the
compose file loads with compose-go (docker compose's loader); the Dockerfiles follow the house rules."""

from __future__ import annotations

import collections
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "docker/helm/llm-lifecycle"
GPU_VALUES = REPO / "docker/helm/values-gpu.yaml"
K8S_VERSION = "1.31.0"


def tool(name: str) -> str:
    """A tool `make tools` installed into the cache (or one on PATH)."""
    cache = Path(os.environ.get("LIFECYCLE_CACHE_DIR", Path.home() / ".cache/llm-lifecycle")) / "bin" / name
    if cache.exists():
        return str(cache)
    found = subprocess.run(["bash", "-c", f"command -v {name}"], capture_output=True, text=True).stdout.strip()
    assert found, f"{name} is not installed: run `make tools`"
    return found


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=120)


def render(*values: Path, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    args = ["template", "lifecycle", str(CHART), "--namespace", "llm-lifecycle", "--kube-version", K8S_VERSION]
    for v in values:
        args += ["-f", str(v)]
    for s in sets:
        args += ["--set", s]
    done = helm(*args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_helm_lint_passes_for_both_values_files() -> None:
    for extra in ([], ["-f", str(GPU_VALUES)]):
        done = helm("lint", "--strict", str(CHART), *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", [(), (GPU_VALUES,)], ids=["default", "gpu"])
def test_rendered_manifests_are_valid_kubernetes(values: tuple[Path, ...]) -> None:
    import kubernetes_validate

    docs = render(*values)
    kinds = collections.Counter(d["kind"] for d in docs)
    print(f"{'gpu' if values else 'default'}: {len(docs)} resources {dict(sorted(kinds.items()))}")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises with the path of the error
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
            "ConfigMap", "Secret", "PersistentVolumeClaim"} <= set(kinds)  # fmt: skip
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        for c in spec["containers"]:
            assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_gpu_values_give_gpu_workers_and_a_multi_node_training_job() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(GPU_VALUES)}
    worker = docs[("Deployment", "lifecycle-llm-lifecycle-worker")]["spec"]["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["containers"][0]["readinessProbe"]["grpc"]["port"] == 50051
    assert worker["terminationGracePeriodSeconds"] >= 60
    job = docs[("Job", "lifecycle-llm-lifecycle-train")]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == 2
    cmd = job["template"]["spec"]["containers"][0]["command"]
    assert "--nnodes=2" in cmd and "--nproc-per-node=4" in cmd
    assert "--rdzv-endpoint=lifecycle-llm-lifecycle-train-0.lifecycle-llm-lifecycle-train:29500" in cmd
    svc = docs[("Service", "lifecycle-llm-lifecycle-train")]["spec"]
    assert svc["clusterIP"] == "None" and job["template"]["spec"]["subdomain"] == "lifecycle-llm-lifecycle-train"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("trainer.gpus=-1", "trainer.gpus"),
        ("worker.gpus=-2", "worker.gpus"),
        ("image.tag=", "image.tag"),
        ("trainer.image.tag=latest", "trainer.image.tag"),
        ("gateway.replicas=0", "gateway.replicas"),
        ("modelName=../etc", "modelName"),
    ],
)
def test_bad_values_fail_with_the_field_named(setting: str, message: str) -> None:
    flag = "--set-string" if setting.startswith("image.tag=") else "--set"
    args = ["template", "lifecycle", str(CHART), "--kube-version", K8S_VERSION, flag, setting]
    done = helm(*args)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message.replace(".", "/") in done.stderr or message in done.stderr, done.stderr


def test_chart_settings_are_valid_and_the_airflow_backend_renders_the_charts_trainer_pod() -> None:
    from lifecycle.settings import load_settings
    from plugins.k8s_training import training_pod
    from training.config import TrainConfig

    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(GPU_VALUES)}
    env = {**docs[("ConfigMap", "lifecycle-llm-lifecycle-settings")]["data"],
           **docs[("Secret", "lifecycle-llm-lifecycle-secrets")]["stringData"]}  # fmt: skip
    env.pop("MLFLOW_BACKEND_STORE_URI")  # MLflow's own, not a LIFECYCLE_ setting
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("LIFECYCLE_")]:
            mp.delenv(key)
        for key, value in env.items():
            mp.setenv(key, value)
        settings = load_settings()  # every LIFECYCLE_ variable of the chart is a known, valid setting
    pod = training_pod(settings, TrainConfig(out_dir="/var/lib/llm-lifecycle/runs/r1"), 4, "r1")
    job = docs[("Job", "lifecycle-llm-lifecycle-train")]["spec"]["template"]["spec"]
    chart_trainer = job["containers"][0]
    assert pod.spec.containers[0].image == chart_trainer["image"] == "ghcr.io/llm-lifecycle/trainer:0.1.0"
    limits = pod.spec.containers[0].resources.limits
    assert {k: str(v) for k, v in chart_trainer["resources"]["limits"].items()} == limits
    assert pod.spec.node_selector == job["nodeSelector"]
    assert [t.to_dict() for t in pod.spec.tolerations] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule", "value": None,
         "toleration_seconds": None}
    ]  # fmt: skip
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == "lifecycle-llm-lifecycle-state"
    # The multi-node Job the backend renders has the chart's Job's shape: same torchrun flags and resources.
    from plugins.k8s_training import training_job

    mine = training_job(settings, TrainConfig(out_dir="/x"), 4, 2, "r1")[0].spec.template.spec.containers[0]

    def flags(cmd: list[str]) -> list[str]:
        return [c.split("=")[0] + ("=" + c.split("=")[1] if c.startswith(("--nnodes", "--nproc", "--rdzv-b")) else "")
                for c in cmd if c.startswith("--")]  # fmt: skip

    assert flags(mine.command) == flags(chart_trainer["command"])
    assert mine.resources.limits == {k: str(v) for k, v in chart_trainer["resources"]["limits"].items()}


def test_compose_file_loads_with_compose_go_and_follows_the_rules() -> None:
    done = subprocess.run([tool("composecheck"), str(REPO / "docker/compose.yaml")], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "services=14" in done.stdout
    bad = REPO / "docker/compose.yaml"
    broken = yaml.safe_load(bad.read_text())
    broken["services"]["gateway"]["depends_on"]["mongo"]["condition"] = "service_sleeping"
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"compose-broken-{os.getpid()}.yaml"
    tmp.write_text(yaml.safe_dump(broken))
    try:
        done = subprocess.run([tool("composecheck"), str(tmp)], capture_output=True, text=True, timeout=60)
    finally:
        tmp.unlink()
    assert done.returncode != 0 and "gateway.depends_on.mongo.condition" in done.stderr, done.stderr


@pytest.mark.parametrize("name", ["serving", "trainer", "airflow", "mlflow"])
def test_dockerfiles_are_pinned_non_root_with_healthchecks(name: str) -> None:
    from dockerfile_parse import DockerfileParser

    df = DockerfileParser(path=str(REPO / f"docker/{name}.Dockerfile"))
    args = {i["value"].split("=", 1)[0]: i["value"].split("=", 1)[1] for i in df.structure if i["instruction"] == "ARG"
            and "=" in i["value"]}  # fmt: skip
    froms = [i["value"].split()[0] for i in df.structure if i["instruction"] == "FROM"]
    for image in froms:
        resolved = args.get(image.strip("${}"), image)
        if resolved in ("build",):  # an earlier stage
            continue
        assert ":" in resolved and not resolved.endswith(":latest"), f"{name}: base image {resolved} is not pinned"
    final = [i for i in df.structure if i["startline"] >= max(
        i["startline"] for i in df.structure if i["instruction"] == "FROM")]  # fmt: skip
    instructions = {i["instruction"] for i in final} | {i["instruction"] for i in df.structure}
    users = [i["value"] for i in df.structure if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name}: runs as root"
    assert "HEALTHCHECK" in instructions, f"{name}: no HEALTHCHECK"
    assert not any(i["instruction"] == "ADD" and "://" in i["value"] for i in df.structure), "ADD of a URL"
    for run in (i["value"] for i in df.structure if i["instruction"] == "RUN" and "apt-get install" in i["value"]):
        assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run, f"{name}: fat apt layer"


def test_helm_values_schema_is_json() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["trainer"]["properties"]["gpus"]["minimum"] == 0
