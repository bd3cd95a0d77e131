"""Offline checks of the deployment artefacts: Dockerfile, entrypoint, compose file, k8s/.

There is no Docker engine or cluster here, so these tests check what can be checked without one:
the manifests against the Kubernetes OpenAPI schemas (kubernetes-validate), the kustomize
structure, the Dockerfile with hadolint, the entrypoint by running it (DRY_RUN=1 prints the
command it would exec), and the variable names against the service contract (docs: API.md §1).
Self-contained on purpose: no fixture from conftest.py, no service started.
"""

from __future__ import annotations

import http.server
import os
import re
import runpy
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config import SETTINGS, load_config
from app.redis_topology import Topology

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
K8S = ROOT / "k8s"
BASE = K8S / "base"
DEV = K8S / "overlays" / "dev"
KUSTOMIZATION_DIRS = [BASE, DEV]
VENV_BIN = Path(sys.executable).parent

# The oldest Kubernetes minor the manifests are checked against; kubernetes-validate ships it.
K8S_VERSION = "1.33"

# The service contract's variables (API.md section 1) and their defaults.
CONTRACT_DEFAULTS = {
    "MONGO_URI": "mongodb://127.0.0.1:27017/opensensor",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/1",
    "CACHE_KEY_PREFIX": "opensensor:",
    "DEVICE_CACHE_TTL": "300",
    "WARM_INTERVAL": "240",
    "STATS_INTERVAL": "60",
}
# Contract variables whose default is to be unset (WARM_TOP_N: warm every device seen within a TTL).
UNSET_BY_DEFAULT = {"WARM_TOP_N"}
CONTRACT_VARS = set(CONTRACT_DEFAULTS)
SECRET_VARS = {"MONGO_URI", "REDIS_URL", "CELERY_BROKER_URL"}
# Ours, read by docker/entrypoint.sh (and LOG_LEVEL by the app too).
TUNING_VARS = {
    "LOG_LEVEL",
    "LOG_FORMAT",
    "PORT",
    "WEB_CONCURRENCY",
    "GUNICORN_WORKER_CLASS",
    "GUNICORN_WORKER_CONNECTIONS",
    "GUNICORN_THREADS",
    "GUNICORN_TIMEOUT",
    "GUNICORN_GRACEFUL_TIMEOUT",
    "GUNICORN_KEEPALIVE",
    "GUNICORN_MAX_REQUESTS",
    "GUNICORN_MAX_REQUESTS_JITTER",
    "CELERY_WORKER_CONCURRENCY",
    "CELERY_BEAT_SCHEDULE",
}
ALLOWED_VARS = CONTRACT_VARS | TUNING_VARS

WEB_DEFAULT_COMMAND = (
    "gunicorn wsgi:app --bind 0.0.0.0:8000 --worker-class gevent --workers 2 --threads 1"
    " --worker-connections 100 --timeout 30 --graceful-timeout 25 --keep-alive 5"
    " --max-requests 2000 --max-requests-jitter 200 --worker-tmp-dir /dev/shm"
    " --no-control-socket --access-logfile - --error-logfile - --log-level INFO"
)
ROLE_COMMANDS = {
    "web": WEB_DEFAULT_COMMAND,
    "worker": "celery -A celery_worker worker --loglevel INFO --concurrency 2 --without-gossip --without-mingle",
    "beat": "celery -A celery_worker beat --loglevel INFO --schedule /tmp/celerybeat-schedule",
    "init-db": "flask --app wsgi init-db",
}


# ---------------------------------------------------------------------------------------------
# helpers


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def load_one(path: Path) -> dict[str, Any]:
    (doc,) = load_docs(path)
    return doc


def kustomization(directory: Path) -> dict[str, Any]:
    return load_one(directory / "kustomization.yaml")


def listed_files(directory: Path) -> list[Path]:
    """Every file a kustomization names: resources that are files, and patch files."""
    kust = kustomization(directory)
    paths = [directory / entry for entry in kust.get("resources", [])]
    paths += [directory / patch["path"] for patch in kust.get("patches", []) if "path" in patch]
    return [path for path in paths if not path.is_dir()]


def resource_files(directory: Path) -> list[Path]:
    kust = kustomization(directory)
    paths = [directory / entry for entry in kust.get("resources", [])]
    return [path for path in paths if path.is_file()]


def objects(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The objects a kustomization builds from its own files and its bases (no patches)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in kustomization(directory).get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            found.update(objects(path))
        else:
            for doc in load_docs(path):
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def base_object(kind: str, name: str) -> dict[str, Any]:
    return objects(BASE)[(kind, name)]


def deployments() -> list[dict[str, Any]]:
    """The Deployments that run this repository's image (not the Celery exporter)."""
    return [
        doc
        for (kind, _), doc in objects(BASE).items()
        if kind == "Deployment" and pod_spec(doc)["containers"][0]["image"] == "opensensor"
    ]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def configmap_data() -> dict[str, str]:
    return base_object("ConfigMap", "opensensor-config")["data"]


def secret_example() -> dict[str, Any]:
    return load_one(BASE / "secret.example.yaml")


def compose() -> dict[str, Any]:
    return load_one(COMPOSE)


def compose_app_services() -> dict[str, dict[str, Any]]:
    """The services that run this repository's image (the others are Redis and MongoDB)."""
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


def entrypoint_env(**overrides: str) -> dict[str, str]:
    env = {"PATH": f"{VENV_BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin", "DRY_RUN": "1"}
    env.update(overrides)
    return env


def run_entrypoint(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), *args],
        env=entrypoint_env(**env),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def dry_run(*args: str, **env: str) -> str:
    result = run_entrypoint(*args, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, rest = line.strip().partition(" ")
            pairs.append((instruction.upper(), " ".join(rest.split())))
    return pairs


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def build_with_component(overlay: Path, component: Path) -> list[dict[str, Any]]:
    """The base plus a component, as an overlay in ``overlay`` (a directory) would combine them."""
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "opensensor",
                "resources": [os.path.relpath(BASE, overlay)],  # kustomize refuses absolute paths
                "components": [os.path.relpath(component, overlay)],
            }
        )
    )
    return kustomize_build(overlay)


def validate(doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")


# ---------------------------------------------------------------------------------------------
# Kubernetes schemas


@pytest.mark.parametrize(
    "path",
    [path for directory in KUSTOMIZATION_DIRS for path in resource_files(directory)] + [BASE / "secret.example.yaml"],
    ids=lambda path: str(path.relative_to(K8S)),
)
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize("directory", KUSTOMIZATION_DIRS, ids=["base", "dev"])
def test_kustomize_output_validates_against_the_kubernetes_schemas(directory: Path) -> None:
    rendered = kustomize_build(directory)
    assert {doc["kind"] for doc in rendered} >= {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for doc in rendered:
        validate(doc)


def test_dev_overlay_runs_a_tagged_image_and_references_its_generated_secret() -> None:
    rendered = kustomize_build(DEV)
    (secret,) = [doc for doc in rendered if doc["kind"] == "Secret"]
    assert secret["metadata"]["name"].startswith("opensensor-secrets")
    for doc in rendered:
        if doc["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        assert doc["metadata"]["namespace"] == "opensensor-dev"
        for container in containers(doc):
            name, _, tag = container["image"].rpartition(":")
            assert name and tag and tag != "latest", container["image"]
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] == secret["metadata"]["name"]


# ---------------------------------------------------------------------------------------------
# kustomize structure


@pytest.mark.parametrize("directory", KUSTOMIZATION_DIRS, ids=["base", "dev"])
def test_every_file_a_kustomization_lists_exists(directory: Path) -> None:
    kust = kustomization(directory)
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    for entry in kust.get("resources", []):
        path = directory / entry
        assert path.is_file() or (path / "kustomization.yaml").is_file(), entry
    for patch in kust.get("patches", []):
        assert (directory / patch["path"]).is_file(), patch


@pytest.mark.parametrize("directory", KUSTOMIZATION_DIRS, ids=["base", "dev"])
def test_every_yaml_in_a_kustomization_dir_is_listed(directory: Path) -> None:
    # *.example.yaml files are documentation: applying placeholders would clobber real values.
    present = {
        path.name
        for path in directory.glob("*.y*ml")
        if path.name != "kustomization.yaml" and not path.name.endswith(".example.yaml")
    }
    assert present == {path.name for path in listed_files(directory)}


def test_dev_overlay_builds_on_the_base() -> None:
    bases = [(DEV / entry).resolve() for entry in kustomization(DEV)["resources"] if (DEV / entry).is_dir()]
    assert bases == [BASE.resolve()]
    assert kustomization(DEV)["namespace"] == "opensensor-dev"


def test_dev_overlay_patches_target_objects_that_exist() -> None:
    known = objects(DEV)
    for path in listed_files(DEV):
        if path.name.endswith("-patch.yaml"):
            patch = load_one(path)
            assert (patch["kind"], patch["metadata"]["name"]) in known, path.name


@pytest.mark.parametrize(
    "workload",
    [doc for (kind, _), doc in objects(DEV).items() if kind in {"Deployment", "StatefulSet"}],
    ids=lambda doc: doc["metadata"]["name"],
)
def test_every_workload_selector_matches_its_own_pods_only(workload: dict[str, Any]) -> None:
    selector = workload["spec"]["selector"]["matchLabels"]
    assert selects(selector, workload["spec"]["template"]["metadata"]["labels"])
    for (kind, name), other in objects(DEV).items():
        if kind in {"Deployment", "StatefulSet"} and name != workload["metadata"]["name"]:
            other_labels = other["spec"]["template"]["metadata"]["labels"]
            assert not selects(selector, other_labels), f"also selects {name}"


def test_service_pdb_and_hpa_all_point_at_the_web_pods() -> None:
    web = base_object("Deployment", "opensensor-web")
    pod_labels = web["spec"]["template"]["metadata"]["labels"]
    service = base_object("Service", "opensensor-web")
    pdb = base_object("PodDisruptionBudget", "opensensor-web")
    hpa = base_object("HorizontalPodAutoscaler", "opensensor-web")

    assert selects(service["spec"]["selector"], pod_labels)
    assert pdb["spec"]["selector"]["matchLabels"] == web["spec"]["selector"]["matchLabels"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "opensensor-web",
    }
    for other in deployments():
        if other["metadata"]["name"] != "opensensor-web":
            assert not selects(service["spec"]["selector"], other["spec"]["template"]["metadata"]["labels"])


def test_web_service_targets_the_named_http_port_of_the_web_container() -> None:
    web = base_object("Deployment", "opensensor-web")
    (container,) = pod_spec(web)["containers"]
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    assert str(port["containerPort"]) == configmap_data()["PORT"]
    service = base_object("Service", "opensensor-web")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


# ---------------------------------------------------------------------------------------------
# behaviour of the web Deployment


def test_web_deployment_never_drops_below_desired_replicas_during_rollout() -> None:
    web = base_object("Deployment", "opensensor-web")
    assert web["spec"]["replicas"] == 4
    strategy = web["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] >= 1
    # Applying the manifests must not push the HPA-managed Deployment below its floor.
    hpa = base_object("HorizontalPodAutoscaler", "opensensor-web")
    assert hpa["spec"]["minReplicas"] == web["spec"]["replicas"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_web_pods_take_traffic_only_when_ready_and_restart_only_when_dead() -> None:
    (container,) = pod_spec(base_object("Deployment", "opensensor-web"))["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/health/live", "port": "http"}
    # /health bounds each dependency probe to about 250 ms; leave it room to answer.
    assert container["readinessProbe"]["timeoutSeconds"] >= 1
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


def test_stopping_web_pod_drains_and_finishes_in_flight_requests_within_its_grace_period() -> None:
    """gunicorn.conf.py drains on SIGTERM (readiness 503, still serving): no preStop sleep is needed."""
    web = base_object("Deployment", "opensensor-web")
    (container,) = pod_spec(web)["containers"]
    assert "preStop" not in container.get("lifecycle", {})
    drain = float(SETTINGS["SHUTDOWN_DRAIN_SECONDS"].default)
    graceful = int(configmap_data()["GUNICORN_GRACEFUL_TIMEOUT"])
    assert pod_spec(web)["terminationGracePeriodSeconds"] > drain + graceful


def test_compose_gives_web_replicas_time_to_drain() -> None:
    drain = float(SETTINGS["SHUTDOWN_DRAIN_SECONDS"].default)
    for name, service in compose_app_services().items():
        if service.get("command") == ["web"]:
            graceful = int(service["environment"]["GUNICORN_GRACEFUL_TIMEOUT"])
            assert int(service["stop_grace_period"].rstrip("s")) > drain + graceful, name


def test_gunicorn_conf_drains_as_long_as_the_setting_says_by_default(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # so loading the file makes no directory
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert conf["DRAIN_DEFAULT"] == SETTINGS["SHUTDOWN_DRAIN_SECONDS"].default
    assert conf["drain_seconds"]({}) == float(SETTINGS["SHUTDOWN_DRAIN_SECONDS"].default)
    assert conf["drain_seconds"]({"SHUTDOWN_DRAIN_SECONDS": "0.5"}) == 0.5
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(SystemExit, match="SHUTDOWN_DRAIN_SECONDS"):
            conf["drain_seconds"]({"SHUTDOWN_DRAIN_SECONDS": bad})


def test_web_pods_spread_across_nodes() -> None:
    web = base_object("Deployment", "opensensor-web")
    pod_labels = web["spec"]["template"]["metadata"]["labels"]
    constraints = {c["topologyKey"]: c for c in pod_spec(web)["topologySpreadConstraints"]}
    by_node = constraints["kubernetes.io/hostname"]
    assert by_node["maxSkew"] == 1
    assert selects(by_node["labelSelector"]["matchLabels"], pod_labels)


def test_a_node_drain_evicts_at_most_one_web_pod_at_a_time() -> None:
    pdb = base_object("PodDisruptionBudget", "opensensor-web")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]


def test_web_runs_migrations_before_serving() -> None:
    (init,) = pod_spec(base_object("Deployment", "opensensor-web"))["initContainers"]
    assert init["args"] == ["init-db"]


# ---------------------------------------------------------------------------------------------
# every workload


@pytest.mark.parametrize("workload", deployments(), ids=lambda doc: doc["metadata"]["name"])
def test_every_app_container_runs_non_root_on_a_read_only_root_with_a_writable_tmp(
    workload: dict[str, Any],
) -> None:
    spec = pod_spec(workload)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    for container in containers(workload):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in volumes[tmp["name"]]


@pytest.mark.parametrize("workload", deployments(), ids=lambda doc: doc["metadata"]["name"])
def test_every_app_container_declares_requests_and_limits(workload: dict[str, Any]) -> None:
    for container in containers(workload):
        resources = container["resources"]
        assert set(resources["requests"]) == {"cpu", "memory"}
        assert set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("workload", deployments(), ids=lambda doc: doc["metadata"]["name"])
def test_every_app_container_reads_config_from_the_configmap_and_secret(
    workload: dict[str, Any],
) -> None:
    for container in containers(workload):
        assert container["image"] == "opensensor"
        assert container["envFrom"] == [
            {"configMapRef": {"name": "opensensor-config"}},
            {"secretRef": {"name": "opensensor-secrets"}},
        ]
        assert "env" not in container


def test_each_deployment_runs_its_role_of_the_one_image() -> None:
    roles = {doc["metadata"]["name"]: pod_spec(doc)["containers"][0]["args"] for doc in deployments()}
    assert roles == {
        "opensensor-web": ["web"],
        "opensensor-worker": ["worker"],
        "opensensor-beat": ["beat"],
    }


def test_beat_runs_as_exactly_one_pod_stopped_before_its_replacement_starts() -> None:
    beat = base_object("Deployment", "opensensor-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    hpas = [doc for (kind, _), doc in objects(DEV).items() if kind == "HorizontalPodAutoscaler"]
    assert all(hpa["spec"]["scaleTargetRef"]["name"] != "opensensor-beat" for hpa in hpas)


def test_worker_gets_time_to_finish_running_tasks_on_shutdown() -> None:
    worker = base_object("Deployment", "opensensor-worker")
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= 30


# ---------------------------------------------------------------------------------------------
# configuration names and values


def test_configmap_and_secret_example_hold_exactly_the_contract_variables() -> None:
    config = set(configmap_data())
    secret = set(secret_example()["stringData"])
    assert secret == SECRET_VARS
    assert not config & secret
    assert config | secret >= CONTRACT_VARS
    assert config - CONTRACT_VARS <= TUNING_VARS, "unknown names in the ConfigMap"


def test_secret_example_holds_placeholders_only() -> None:
    for name, value in secret_example()["stringData"].items():
        assert "CHANGE_ME" in value, name


def test_configmap_keeps_the_contract_defaults() -> None:
    data = configmap_data()
    for name in CONTRACT_VARS - SECRET_VARS:
        assert data[name] == CONTRACT_DEFAULTS[name], name
    assert not UNSET_BY_DEFAULT & set(data)


def test_dev_overlay_generates_a_secret_with_the_connection_variables() -> None:
    (generator,) = kustomization(DEV)["secretGenerator"]
    assert generator["name"] == "opensensor-secrets"
    values = dict(literal.split("=", 1) for literal in generator["literals"])
    assert set(values) == SECRET_VARS
    assert values["REDIS_URL"].endswith("/0")
    assert values["CELERY_BROKER_URL"].endswith("/1")


def test_every_tuning_variable_is_read_by_the_entrypoint() -> None:
    script = ENTRYPOINT.read_text(encoding="utf-8")
    read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", script)) - {"DRY_RUN"}
    assert read == TUNING_VARS
    assert set(configmap_data()) - CONTRACT_VARS <= read


@pytest.mark.parametrize("service", sorted(compose_app_services()))
def test_compose_app_services_use_exactly_the_contract_variables(service: str) -> None:
    env = compose_app_services()[service]["environment"]
    assert set(env) >= CONTRACT_VARS
    assert set(env) <= ALLOWED_VARS, set(env) - ALLOWED_VARS
    for name in CONTRACT_VARS - SECRET_VARS:
        assert str(env[name]) == CONTRACT_DEFAULTS[name], name
    assert not UNSET_BY_DEFAULT & set(env)


def test_compose_keeps_cache_and_broker_in_separate_databases_of_one_redis() -> None:
    for env in (svc["environment"] for svc in compose_app_services().values()):
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["CELERY_BROKER_URL"] == "redis://redis:6379/1"
        assert env["MONGO_URI"] == "mongodb://mongo:27017/opensensor"


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_runs_two_web_replicas_on_their_own_ports_sharing_one_cache() -> None:
    services = compose_app_services()
    webs = {name: svc for name, svc in services.items() if svc["command"] == ["web"]}
    assert len(webs) == 2
    published = [port.split(":")[0] for svc in webs.values() for port in svc["ports"]]
    targets = {port.split(":")[1] for svc in webs.values() for port in svc["ports"]}
    assert len(set(published)) == 2
    assert targets == {"8000"}
    assert len({svc["environment"]["REDIS_URL"] for svc in webs.values()}) == 1


def test_compose_runs_one_worker_one_beat_and_a_one_shot_init_db() -> None:
    commands = sorted(svc["command"][0] for svc in compose_app_services().values())
    assert commands == ["beat", "init-db", "web", "web", "worker"]
    (init_db,) = [svc for svc in compose_app_services().values() if svc["command"] == ["init-db"]]
    assert init_db["restart"] == "no"
    for svc in compose_app_services().values():
        if svc["command"] != ["init-db"]:
            assert svc["depends_on"]["init-db"] == {"condition": "service_completed_successfully"}


def test_compose_app_services_share_one_image_with_a_read_only_root() -> None:
    services = compose_app_services()
    assert {svc["image"] for svc in services.values()} == {"opensensor:local"}
    for svc in services.values():
        assert svc["build"] == "."
        assert svc["read_only"] is True
        assert "/tmp" in svc["tmpfs"]


def test_compose_uses_official_redis_and_mongodb_7_or_later() -> None:
    services = compose()["services"]
    redis_image = services["redis"]["image"]
    mongo_image = services["mongo"]["image"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+", redis_image), redis_image
    match = re.fullmatch(r"mongo:(\d+)\.\d+\.\d+", mongo_image)
    assert match and int(match.group(1)) >= 7, mongo_image


def redis_policy(args: list[str]) -> str:
    return args[args.index("--maxmemory-policy") + 1]


def test_shared_redis_evicts_only_keys_with_a_ttl_so_broker_queues_survive() -> None:
    compose_args = compose()["services"]["redis"]["command"]
    (container,) = pod_spec(objects(DEV)[("StatefulSet", "redis")])["containers"]
    for args in (compose_args, container["args"]):
        assert "--maxmemory" in args
        assert redis_policy(args).startswith("volatile-")


def test_compose_worker_and_beat_do_not_probe_the_http_port() -> None:
    services = compose()["services"]
    assert services["beat"]["healthcheck"] == {"disable": True}
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])


# ---------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert hadolint, "hadolint is missing: pip install -r requirements-dev.txt"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_from_a_pinned_slim_bookworm_python_patch_release() -> None:
    instructions = dockerfile_instructions()
    (arg,) = [rest for name, rest in instructions if name == "ARG" and rest.startswith("PYTHON_")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", arg)
    stages = [rest for name, rest in instructions if name == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]


def test_dockerfile_installs_only_runtime_dependencies_before_copying_the_code() -> None:
    instructions = dockerfile_instructions()
    assert all("requirements-dev" not in rest for _, rest in instructions)
    copy_requirements = instructions.index(("COPY", "requirements.txt /tmp/requirements.txt"))
    install = next(i for i, (name, rest) in enumerate(instructions) if name == "RUN" and "pip install" in rest)
    copy_code = instructions.index(("COPY", ". /app"))
    assert copy_requirements < install < copy_code
    assert "-r /tmp/requirements.txt" in instructions[install][1]


def test_image_runs_as_a_non_root_user_through_the_entrypoint() -> None:
    instructions = dockerfile_instructions()
    (user,) = [rest for name, rest in instructions if name == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert ("ENTRYPOINT", '["docker-entrypoint"]') in instructions
    assert ("CMD", '["web"]') in instructions
    assert ("COPY", "--chmod=0755 docker/entrypoint.sh /usr/local/bin/docker-entrypoint") in (instructions)
    uid_in_k8s = {pod_spec(doc)["securityContext"]["runAsUser"] for doc in deployments()}
    assert uid_in_k8s == {int(uid)}


def test_image_healthcheck_probes_liveness_through_the_entrypoint() -> None:
    (healthcheck,) = [rest for name, rest in dockerfile_instructions() if name == "HEALTHCHECK"]
    assert healthcheck.endswith('CMD ["docker-entrypoint", "healthcheck"]')


def test_dockerignore_keeps_secrets_tests_and_dev_tools_out_of_the_image() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    expected = {".git", ".venv", ".env", "tests", "bench", "k8s", "requirements-dev.txt"}
    assert expected <= patterns
    assert "requirements.txt" not in patterns
    assert "docker" not in patterns


def test_dockerignore_keeps_the_dev_servers_package_out_of_the_image() -> None:
    """``devstack/`` starts redis-server, SecantusDB and the like for local runs and tests: never in production."""
    patterns = {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()}
    assert "devstack" in patterns


# ---------------------------------------------------------------------------------------------
# docker/entrypoint.sh


def test_entrypoint_is_an_executable_posix_shell_script() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text(encoding="utf-8").startswith("#!/bin/sh\n")
    result = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("role", sorted(ROLE_COMMANDS))
def test_entrypoint_maps_each_role_to_its_contract_command(role: str) -> None:
    assert dry_run(role) == ROLE_COMMANDS[role]


def test_entrypoint_tunes_gunicorn_from_the_environment() -> None:
    command = dry_run(
        "web",
        PORT="9000",
        WEB_CONCURRENCY="5",
        GUNICORN_WORKER_CLASS="gthread",
        GUNICORN_THREADS="8",
        GUNICORN_WORKER_CONNECTIONS="50",
        GUNICORN_TIMEOUT="60",
        GUNICORN_GRACEFUL_TIMEOUT="20",
        GUNICORN_KEEPALIVE="2",
        GUNICORN_MAX_REQUESTS="500",
        GUNICORN_MAX_REQUESTS_JITTER="50",
        LOG_LEVEL="WARNING",
    )
    assert command == (
        "gunicorn wsgi:app --bind 0.0.0.0:9000 --worker-class gthread --workers 5 --threads 8"
        " --worker-connections 50 --timeout 60 --graceful-timeout 20 --keep-alive 2"
        " --max-requests 500 --max-requests-jitter 50 --worker-tmp-dir /dev/shm"
        " --no-control-socket --access-logfile - --error-logfile - --log-level WARNING"
    )


def test_entrypoint_appends_extra_arguments_to_a_role() -> None:
    assert dry_run("worker", "-Q", "celery") == ROLE_COMMANDS["worker"] + " -Q celery"


def test_configmap_and_compose_values_match_the_entrypoint_defaults() -> None:
    # LOG_FORMAT=json in the ConfigMap (for the log store) only adds Celery's --quiet: see below.
    env = {k: v for k, v in configmap_data().items() if k in TUNING_VARS - {"LOG_FORMAT"}}
    assert dry_run("web", **env) == WEB_DEFAULT_COMMAND
    assert dry_run("worker", **env) == ROLE_COMMANDS["worker"]
    for svc in compose_app_services().values():
        tuning = {k: str(v) for k, v in svc["environment"].items() if k in TUNING_VARS}
        assert dry_run(*svc["command"], **tuning) == ROLE_COMMANDS[svc["command"][0]]


def test_gunicorn_accepts_every_option_the_entrypoint_passes() -> None:
    from gunicorn.config import Config

    argv = shlex.split(dry_run("web"))
    config = Config()
    parsed = config.parser().parse_args(argv[1:])
    for key, value in vars(parsed).items():
        if key != "args" and value is not None:
            config.set(key.lower(), value)
    assert parsed.args == ["wsgi:app"]
    assert config.worker_class_str == "gevent"
    assert config.max_requests_jitter == 200


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_celery_accepts_every_option_the_entrypoint_passes(role: str) -> None:
    from celery import Celery
    from celery.bin.beat import beat
    from celery.bin.worker import worker

    argv = shlex.split(dry_run(role))
    assert argv[:4] == ["celery", "-A", "celery_worker", role]
    command = {"worker": worker, "beat": beat}[role]
    obj = SimpleNamespace(app=Celery("deploy-check", set_as_current=False))
    params = command.make_context(role, argv[4:], obj=obj).params
    if role == "worker":
        assert not params["beat"], "beat must run as its own process, never worker -B"
    else:
        assert params["schedule"].startswith("/tmp/")


def test_entrypoint_passes_an_arbitrary_command_through() -> None:
    assert dry_run("flask", "--app", "wsgi", "init-db") == "flask --app wsgi init-db"


def test_entrypoint_execs_so_the_process_receives_the_container_signals() -> None:
    env = entrypoint_env()
    del env["DRY_RUN"]
    with subprocess.Popen(
        [str(ENTRYPOINT), "sh", "-c", "echo $$"], env=env, stdout=subprocess.PIPE, text=True
    ) as process:
        out, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert out.strip() == str(process.pid)


@pytest.mark.parametrize("args", [["webb"], [], ["--help"]], ids=["typo", "nothing", "option"])
def test_entrypoint_rejects_an_unknown_role_with_a_usage_line(args: list[str]) -> None:
    result = run_entrypoint(*args)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "usage: entrypoint.sh {web|worker|beat|init-db|healthcheck|" in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [("WEB_CONCURRENCY", "two"), ("WEB_CONCURRENCY", "0"), ("GUNICORN_TIMEOUT", "-1")],
)
def test_entrypoint_refuses_a_malformed_tuning_value_with_one_line(name: str, value: str) -> None:
    result = run_entrypoint("web", **{name: value})
    assert result.returncode != 0
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert name in line and value in line


@pytest.fixture
def live_endpoint() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health/live" else 404)
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_healthcheck_passes_while_the_web_process_answers_liveness(live_endpoint: int) -> None:
    env = entrypoint_env(PORT=str(live_endpoint))
    del env["DRY_RUN"]
    result = subprocess.run([str(ENTRYPOINT), "healthcheck"], env=env, capture_output=True, timeout=15, check=False)
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = entrypoint_env(PORT=str(port))
    del env["DRY_RUN"]
    result = subprocess.run([str(ENTRYPOINT), "healthcheck"], env=env, capture_output=True, timeout=15, check=False)
    assert result.returncode != 0


def test_every_role_compose_and_kubernetes_start_is_one_the_entrypoint_knows() -> None:
    commands = [svc["command"] for svc in compose_app_services().values()]
    commands += [c["args"] for doc in deployments() for c in containers(doc)]
    for command in commands:
        assert run_entrypoint(*command).returncode == 0, command


def test_json_logs_silence_celerys_banners_and_leave_gunicorn_to_its_config_file() -> None:
    assert dry_run("worker", LOG_FORMAT="json") == ROLE_COMMANDS["worker"].replace(" worker ", " --quiet worker ", 1)
    assert dry_run("beat", LOG_FORMAT="json") == ROLE_COMMANDS["beat"].replace(" beat ", " --quiet beat ", 1)
    assert dry_run("web", LOG_FORMAT="json") == WEB_DEFAULT_COMMAND
    assert configmap_data()["LOG_FORMAT"] == "json"


def test_every_web_entry_point_reads_gunicorn_conf_py() -> None:
    """Multiprocess metrics and JSON logs live there: gunicorn reads ./gunicorn.conf.py by default."""
    from gunicorn.config import Config

    assert Config().settings["config"].default == "./gunicorn.conf.py"
    assert (ROOT / "gunicorn.conf.py").is_file()
    instructions = dockerfile_instructions()
    assert ("WORKDIR", "/app") in instructions and ("COPY", ". /app") in instructions
    ignored = DOCKERIGNORE.read_text(encoding="utf-8").split()
    assert not any(re.fullmatch(pattern.replace("*", ".*"), "gunicorn.conf.py") for pattern in ignored)
    for command in (dry_run("web"), (ROOT / "Procfile").read_text().splitlines()[0].split(":", 1)[1]):
        assert "--config" not in command and " -c " not in command  # nothing points elsewhere


def test_web_pods_carry_the_plain_prometheus_scrape_annotations() -> None:
    web = base_object("Deployment", "opensensor-web")
    annotations = web["spec"]["template"]["metadata"]["annotations"]
    (port,) = pod_spec(web)["containers"][0]["ports"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port["containerPort"]),
        "prometheus.io/path": "/metrics",
    }


def test_one_pinned_celery_exporter_runs_beside_the_worker_on_the_broker_url() -> None:
    exporter = base_object("Deployment", "opensensor-celery-exporter")
    assert exporter["spec"]["replicas"] == 1
    (container,) = pod_spec(exporter)["containers"]
    name, _, tag = container["image"].rpartition(":")
    assert name == "danihodovic/celery-exporter" and re.fullmatch(r"\d+\.\d+\.\d+", tag), container["image"]
    (env,) = container["env"]
    assert env == {
        "name": "CE_BROKER_URL",
        "valueFrom": {"secretKeyRef": {"name": "opensensor-secrets", "key": "CELERY_BROKER_URL"}},
    }
    (port,) = container["ports"]
    annotations = exporter["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"]) == "9808"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec(exporter)["securityContext"]["runAsNonRoot"] is True
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}


def test_sentinel_component_points_the_app_at_a_sentinel_set_the_app_accepts(tmp_path: Path) -> None:
    rendered = build_with_component(tmp_path, K8S / "components" / "redis-sentinel")
    for doc in rendered:
        validate(doc)
    (config,) = [
        doc for doc in rendered if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "opensensor-config"
    ]
    data = config["data"]
    assert data["REDIS_SENTINELS"] and data["REDIS_SENTINEL_MASTER"] and "REDIS_URL" not in data
    # What the app makes of it, with a Secret holding MONGO_URI only (no REDIS_URL, as the component says).
    env = {**{k: v for k, v in data.items() if k in SETTINGS}, "MONGO_URI": CONTRACT_DEFAULTS["MONGO_URI"]}
    config = load_config(env)
    assert Topology.from_config(config).name == "sentinel"
    assert config["CELERY_BROKER_URL"].startswith("sentinel://redis-node-0.redis-headless:26379/1;")
