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
# the chart requires the gateway's keys and credentials for MongoDB and MLflow
KEYS = ("--set", "existingApiKeySecret=lifecycle-api-keys",
        "--set", "mongo.uri=mongodb://lifecycle:mongo-secret-1@mongo.db.svc:27017/?replicaSet=rs0",
        "--set", "mlflow.password=mlflow-secret-1", "--set", "mlflow.secretKey=csrf-secret-1")  # fmt: skip
#: compose has no default secrets: each must be given (docker/.env.example)
COMPOSE_SECRETS = {
    k: f"test-{k.lower()}"
    for k in (
        "LIFECYCLE_API_KEYS",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_SECRET_KEY",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_ADMIN_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "MONGO_PASSWORD",
        "MLFLOW_PASSWORD",
        "MLFLOW_SECRET_KEY",
        "POSTGRES_PASSWORD",
        "KAFKA_PASSWORD",
    )
}


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
    args = ["template", "lifecycle", str(CHART), "--namespace", "llm-lifecycle", "--kube-version", K8S_VERSION, *KEYS]
    for v in values:
        args += ["-f", str(v)]
    for s in sets:
        args += ["--set", s]
    done = helm(*args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_helm_lint_passes_for_both_values_files() -> None:
    for extra in ([], ["-f", str(GPU_VALUES)]):
        done = helm("lint", "--strict", str(CHART), *KEYS, *extra)
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
    args = ["template", "lifecycle", str(CHART), "--kube-version", K8S_VERSION, *KEYS, flag, setting]
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
    # the chart's credentials reach the pod from its Secret, none is written into the pod spec
    assert pod.spec.containers[0].env_from[0].secret_ref.name == "lifecycle-llm-lifecycle-secrets"
    assert "secret-1" not in str(pod)
    # The multi-node Job the backend renders has the chart's Job's shape: same torchrun flags and resources.
    from plugins.k8s_training import training_job

    mine = training_job(settings, TrainConfig(out_dir="/x"), 4, 2, "r1")[0].spec.template.spec.containers[0]

    def flags(cmd: list[str]) -> list[str]:
        return [c.split("=")[0] + ("=" + c.split("=")[1] if c.startswith(("--nnodes", "--nproc", "--rdzv-b")) else "")
                for c in cmd if c.startswith("--")]  # fmt: skip

    assert flags(mine.command) == flags(chart_trainer["command"])
    assert mine.resources.limits == {k: str(v) for k, v in chart_trainer["resources"]["limits"].items()}


def test_compose_file_loads_with_compose_go_and_follows_the_rules() -> None:
    def check(path: Path, **unset: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in {**os.environ, **COMPOSE_SECRETS}.items() if k not in unset}
        return subprocess.run([tool("composecheck"), str(path)], capture_output=True, text=True, timeout=60, env=env)

    done = check(REPO / "docker/compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "services=16" in done.stdout  # 14 of the platform, Prometheus and Grafana
    # No default secrets: without the gateway's keys (or any other secret) compose refuses, naming it.
    for missing in ("LIFECYCLE_API_KEYS", "AIRFLOW_FERNET_KEY", "KAFKA_PASSWORD", "MONGO_PASSWORD", "MLFLOW_PASSWORD"):
        done = check(REPO / "docker/compose.yaml", **{missing: ""})
        assert done.returncode != 0 and f"set {missing}" in done.stderr, done.stderr
    # MongoDB and MLflow authenticate: mongo's root user (and --keyFile, which a replica set with auth
    # needs), MLflow's basic-auth app letting nobody but its admin in; every client has the credentials.
    compose = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    env, services = compose["x-lifecycle-env"], compose["services"]
    assert env["LIFECYCLE_MONGO_URI"].startswith("mongodb://lifecycle:${MONGO_PASSWORD:?")
    assert "MONGO_PASSWORD" in services["mongo"]["environment"]["MONGO_INITDB_ROOT_PASSWORD"]
    mongo = services["mongo"]
    assert "--keyFile" in mongo["command"][0] and "-u lifecycle" in mongo["healthcheck"]["test"][1]
    assert "--app-name=basic-auth" in services["mlflow"]["command"]
    assert "NO_PERMISSIONS" in compose["configs"]["mlflow-auth"]["content"]
    assert env["MLFLOW_TRACKING_USERNAME"] == "lifecycle" and "MLFLOW_PASSWORD" in env["MLFLOW_TRACKING_PASSWORD"]
    bad = REPO / "docker/compose.yaml"
    broken = yaml.safe_load(bad.read_text())
    broken["services"]["gateway"]["depends_on"]["mongo"]["condition"] = "service_sleeping"
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"compose-broken-{os.getpid()}.yaml"
    tmp.write_text(yaml.safe_dump(broken))
    try:
        done = check(tmp)
    finally:
        tmp.unlink()
    assert done.returncode != 0 and "gateway.depends_on.mongo.condition" in done.stderr, done.stderr


def test_the_chart_does_not_render_a_gateway_without_api_keys() -> None:
    done = helm("template", "lifecycle", str(CHART), "--kube-version", K8S_VERSION, *KEYS[2:])  # all but the keys
    assert done.returncode != 0 and "apiKeys or existingApiKeySecret is required" in done.stderr, done.stderr
    docs = render(sets=("existingApiKeySecret=", "apiKeys={key-one-1,key-two-2}"))
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert secret["stringData"]["LIFECYCLE_API_KEYS"] == "key-one-1,key-two-2"
    assert "LIFECYCLE_KAFKA_USERNAME" not in secret["stringData"]


def test_kafka_credentials_go_to_the_secret_and_a_user_needs_a_password() -> None:
    docs = render(sets=("kafka.username=lifecycle", "kafka.password=scram-secret-1"))
    secret = next(d for d in docs if d["kind"] == "Secret")["stringData"]
    assert (secret["LIFECYCLE_KAFKA_USERNAME"], secret["LIFECYCLE_KAFKA_PASSWORD"]) == ("lifecycle", "scram-secret-1")
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-settings"))
    assert not any("PASSWORD" in k for k in config["data"])
    done = helm("template", "lifecycle", str(CHART), "--kube-version", K8S_VERSION, *KEYS, "--set", "kafka.username=x")
    assert done.returncode != 0 and "/kafka" in done.stderr and "password" in done.stderr, done.stderr


def test_mongo_and_mlflow_credentials_are_required_and_mlflow_runs_basic_auth() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render()}
    secret = docs[("Secret", "lifecycle-llm-lifecycle-secrets")]["stringData"]
    assert secret["LIFECYCLE_MONGO_URI"].startswith("mongodb://lifecycle:mongo-secret-1@")
    assert (secret["MLFLOW_TRACKING_USERNAME"], secret["MLFLOW_TRACKING_PASSWORD"]) == ("lifecycle", "mlflow-secret-1")
    mlflow = docs[("Deployment", "lifecycle-llm-lifecycle-mlflow")]["spec"]["template"]["spec"]["containers"][0]
    assert "--app-name basic-auth" in mlflow["args"][0]
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") for e in mlflow["env"]}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "MLFLOW_TRACKING_PASSWORD"
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "MLFLOW_FLASK_SERVER_SECRET_KEY"
    ini = docs[("ConfigMap", "lifecycle-llm-lifecycle-mlflow-auth")]["data"]["auth.ini"]
    assert "default_permission = NO_PERMISSIONS" in ini and "admin_username = lifecycle" in ini
    assert not any("secret-1" in v for d in docs.values() if d["kind"] == "ConfigMap"
                   for v in d.get("data", {}).values())  # fmt: skip

    def fails(*sets: str) -> str:
        args = [a for kv in (("--set", x) for x in sets) for a in kv]
        done = helm("template", "lifecycle", str(CHART), "--kube-version", K8S_VERSION, *KEYS, *args)
        assert done.returncode != 0, f"rendered with {sets}"
        return done.stderr

    assert "mongo.uri has no user and password" in fails("mongo.uri=mongodb://mongo.db.svc:27017/")
    assert "mongo.uri is required" in fails("mongo.uri=")
    assert "mlflow.password is required" in fails("mlflow.password=")
    assert "mlflow.secretKey is required" in fails("mlflow.secretKey=")
    anonymous = render(sets=("mongo.uri=mongodb://mongo.db.svc:27017/", "mongo.allowAnonymous=true"))
    assert next(d for d in anonymous if d["kind"] == "Secret")["stringData"]["LIFECYCLE_MONGO_URI"].endswith(":27017/")


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


def test_metrics_scraped_by_annotations_or_a_service_monitor_and_the_dashboard_ships() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render()}
    pod = docs[("Deployment", "lifecycle-llm-lifecycle-gateway")]["spec"]["template"]["metadata"]["annotations"]
    assert pod["prometheus.io/scrape"] == "true" and pod["prometheus.io/path"] == "/metrics"
    assert ("ServiceMonitor", "lifecycle-llm-lifecycle-gateway") not in docs  # needs the operator's CRDs: opt-in
    board = docs[("ConfigMap", "lifecycle-llm-lifecycle-dashboard")]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (REPO / "docker/grafana/dashboards/llm-lifecycle.json").read_text()
    assert json.loads(board["data"]["llm-lifecycle.json"]) == json.loads(shipped)
    assert (CHART / "dashboards/llm-lifecycle.json").read_text() == shipped  # the chart's copy is the same file

    monitored = {(d["kind"], d["metadata"]["name"]): d for d in render(sets=("metrics.serviceMonitor.enabled=true",))}
    monitor = monitored[("ServiceMonitor", "lifecycle-llm-lifecycle-gateway")]
    service = monitored[("Service", "lifecycle-llm-lifecycle-gateway")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_every_metric_the_dashboard_plots_is_one_the_gateway_exports() -> None:
    """The dashboard's queries name metrics the gateway's registry really has (after a worker reported)."""
    import re
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from lifecycle.v1 import inference_pb2
    from serving.gateway.metrics import Metrics

    metrics = Metrics()
    worker = SimpleNamespace(address="w1:50051", up=True, model="m", version="3", queued=0, outstanding=0,
                             loaded=[("m", "3", "abc")], stats=inference_pb2.EngineStats(decode_passes=1))  # fmt: skip
    metrics.observe_pool(SimpleNamespace(workers=[worker]))
    metrics.requests.labels("/v1/chat/completions", "200").inc()
    metrics.latency.labels("/v1/chat/completions").observe(0.1)
    metrics.ttft.labels("/v1/chat/completions").observe(0.1)
    metrics.retries.labels("before_first_token").inc()
    metrics.shadows.labels("mirrored").inc()
    exported = {line.split("{")[0].split(" ")[0] for line in generate_latest(metrics.registry).decode().splitlines()
                if line and not line.startswith("#")}  # fmt: skip
    board = json.loads((REPO / "docker/grafana/dashboards/llm-lifecycle.json").read_text())
    used = {m for p in board["panels"] for t in p["targets"] for m in re.findall(r"lifecycle_[a-z_]+", t["expr"])}
    assert len(used) >= 15 and used <= exported, sorted(used - exported)
