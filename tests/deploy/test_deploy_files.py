"""The deployment files, checked offline with the tools their ecosystems use.

No container engine or cluster runs here, so each file is checked for what can be known
without one: hadolint on the Dockerfile; the Compose specification's and GitHub's workflow
schemas (check-jsonschema's vendored copies); `kubectl kustomize` for every overlay, each
object then validated against the Kubernetes 1.32 schemas in strict mode (unknown fields
fail); the Prometheus Operator's ServiceMonitor (a CRD, absent from those schemas) by its own
checks; `terraform fmt -check`. Then what no schema knows: every secret compose reads is
named in .env.example and set nowhere, every FLYWHEEL_* variable is a real setting and the
settings load, probes hit real routes, the serve image installs serve.lock with hashes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from flywheel.config import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.prefix) / "bin"
K8S_VERSION = "1.32.0"  # kubectl on this machine is v1.32
BUILDS = ["overlays/dev", "overlays/prod", "jobs/train", "jobs/train-gpu"]
SECRET_KEYS = {
    "database-url",
    "source-url",
    "admin-token",
    "labels-key",
    "aws-access-key-id",
    "aws-secret-access-key",
}


def tool(name: str) -> str:
    """The tool's path. A missing tool fails the check (a skip would pass unchecked files):
    the dev lock brings hadolint and check-jsonschema, .ci/run brings promtool, and kubectl
    and terraform are on this machine."""
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if found is None:
        pytest.fail(f"{name} is not installed, so this check cannot run (docs/testing.md)")
    return found


def run(*cmd: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- settings


def env_names(model: type[BaseModel] = Settings, prefix: str = "FLYWHEEL_") -> set[str]:
    """Every FLYWHEEL_* variable the settings read (nested keys joined with __)."""
    names = {"FLYWHEEL_CONFIG"} if model is Settings else set()
    for key, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names |= env_names(kind, f"{prefix}{key.upper()}__")
        else:
            names.add(f"{prefix}{key.upper()}")
    return names


def config_show(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """`flywheel config show --json` with these variables only (a fresh folder as cwd)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_"))}
    proc = subprocess.run(
        [str(BIN / "flywheel"), "config", "show", "--json"],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_env_names_come_from_the_settings() -> None:
    names = env_names()
    assert {"FLYWHEEL_SERVING__PREDICTION_LOG_URL", "FLYWHEEL_ADMIN_TOKEN"} <= names
    assert "FLYWHEEL_SERVING__PREDICTION_LOG" not in names


def serving_routes() -> set[str]:
    """The GET routes of the server's lean front (where the probes land)."""
    source = (REPO / "src" / "flywheel" / "serving" / "rest.py").read_text()
    return set(re.findall(r'\("GET", "(/[^"]*)"\)', source))


# --------------------------------------------------------------------------- Dockerfile

DOCKERFILE = REPO / "Dockerfile"


def stages() -> dict[str, str]:
    """Each stage's text by its name."""
    parts = re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.M)[1:]
    return {p.split("\n", 1)[0].split(" AS ")[-1].strip(): p for p in parts}


def test_hadolint_finds_nothing() -> None:
    proc = run(tool("hadolint"), "--failure-threshold", "style", str(DOCKERFILE))
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_the_base_is_pinned_by_digest_and_the_images_run_as_a_user() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base[1])
    found = stages()
    assert {"serve", "train"} <= found.keys()
    for target in ("serve", "train"):
        body = found[target]
        assert re.search(r"^USER 10001:10001$", body, re.M), target
        assert "HEALTHCHECK" in body and "ENTRYPOINT" in body, target


def test_the_serve_image_installs_serve_lock_with_hashes_and_nothing_else() -> None:
    found = stages()
    venv = found["serve-venv"]
    assert "requirements/serve.lock" in venv and "main.lock" not in venv
    install = re.search(r"pip install([^\n]*\\\n)*[^\n]*-r /tmp/serve.lock", venv)
    assert install, venv
    assert "--require-hashes" in install[0] and "--no-deps" in install[0]
    assert re.search(r"pip install --no-deps /wheels/", venv)
    serve = found["serve"]
    assert "--from=serve-venv" in serve and "train-venv" not in serve
    assert "--require-hashes" in found["train-venv"] and "main.lock" in found["train-venv"]
    # the lock itself carries a hash on every pin (else pip refuses the whole file)
    lock = (REPO / "requirements" / "serve.lock").read_text()
    pins = re.findall(r"^[a-z0-9_.-]+==\S+", lock, re.M | re.I)
    assert pins and len(
        re.findall(r"^[a-z0-9_.-]+==\S+ \\\n\s+--hash=sha256:", lock, re.M | re.I)
    ) == len(pins)
    assert "scikit-learn==" not in lock


def test_the_healthchecks_probe_real_routes() -> None:
    routes = serving_routes()
    probed = re.findall(r"http://127\.0\.0\.1:[^/]*(/[a-z0-9/]+)", DOCKERFILE.read_text())
    assert probed == ["/v2/health/ready"]
    assert set(probed) <= routes
    assert "worker" in stages()["train"] and "--healthcheck" in stages()["train"]


def test_the_build_context_leaves_secrets_and_state_out() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert (
        ignore[0 if ignore[0] == "*" else [ln.startswith("#") for ln in ignore].index(False)] == "*"
    )
    copied = set(re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE.read_text(), re.M))
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for path in copied:
        assert path.rstrip("/") in allowed, path
    assert "**/.env" in ignore


# --------------------------------------------------------------------------- Compose

COMPOSE = DEPLOY / "compose.yaml"
VAR = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+)(?::?[?-][^}]*)?\}")


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def compose(values: dict[str, str]) -> dict[str, Any]:
    """compose.yaml as compose reads it: ${VAR} from .env, $$ as $, merge keys resolved."""
    text = VAR.sub(lambda m: values[m[1]], COMPOSE.read_text()).replace("$$", "$")
    return dict(yaml.safe_load(text))


def test_compose_matches_the_compose_specification() -> None:
    proc = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_secret_is_named_in_env_example_and_set_nowhere() -> None:
    used = set(VAR.findall(COMPOSE.read_text()))
    example = env_example()
    assert used == set(example), used ^ set(example)
    assert all(value == "" for value in example.values()), example
    # and compose refuses to start without each one (${VAR:?...}), never a default
    for name in used:
        assert re.search(rf"\$\{{{name}:\?", COMPOSE.read_text()), name
        assert not re.search(rf"\$\{{{name}:?-", COMPOSE.read_text()), name


def test_compose_services_healthchecks_and_dependencies() -> None:
    spec = compose(dict.fromkeys(env_example(), "x"))
    services = spec["services"]
    expected = {"flywheel-serve", "flywheel-worker", "postgres", "minio", "minio-setup"}
    expected |= {"mlflow", "mosquitto", "prometheus", "grafana"}
    assert expected <= services.keys()
    for name, service in services.items():
        if name != "minio-setup":  # the one-shot: others wait for it to complete
            assert "healthcheck" in service, name
        for dep, cond in service.get("depends_on", {}).items():
            want = cond["condition"]
            assert want in {"service_healthy", "service_completed_successfully", "service_started"}
            if want == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"
            if want == "service_completed_successfully":
                assert services[dep].get("restart") == "no", dep
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert "prometheus" in source or "grafana" in source or (DEPLOY / source).exists()
            else:
                assert source in spec["volumes"], f"{name}: undeclared volume {source}"
    assert services["flywheel-serve"]["build"]["target"] == "serve"
    assert services["flywheel-worker"]["build"]["target"] == "train"
    assert services["flywheel-worker"]["command"][0] == "worker"
    assert services["flywheel-worker"]["healthcheck"]["test"][1:] == [
        "flywheel",
        "worker",
        "--healthcheck",
    ]
    prometheus = services["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus
    grafana = services["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana
    for name, service in services.items():  # nothing listens beyond this machine
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_compose_probes_hit_real_routes() -> None:
    spec = compose(dict.fromkeys(env_example(), "x"))
    probe = " ".join(spec["services"]["flywheel-serve"]["healthcheck"]["test"])
    paths = re.findall(r"http://127\.0\.0\.1:8080(/[a-z0-9/]+)", probe)
    assert paths and set(paths) <= serving_routes()


@pytest.mark.parametrize("service", ["flywheel-serve", "flywheel-worker"])
def test_compose_flywheel_settings_are_real_and_load(service: str, tmp_path: Path) -> None:
    secrets = {k: f"{k.lower().replace('_', '-')}-value" for k in env_example()}
    env = {k: str(v) for k, v in compose(secrets)["services"][service]["environment"].items()}
    flywheel_vars = {k for k in env if k.startswith("FLYWHEEL_")}
    assert flywheel_vars <= env_names(), flywheel_vars - env_names()
    config = env.pop("FLYWHEEL_CONFIG")
    assert config == "/etc/flywheel/flywheel.yaml"
    mounts = compose(secrets)["services"][service]["volumes"]
    assert "./flywheel.yaml:/etc/flywheel/flywheel.yaml:ro" in mounts
    shown = config_show({**env, "FLYWHEEL_CONFIG": str(DEPLOY / "flywheel.yaml")}, tmp_path)
    assert shown["home"] == "/var/lib/flywheel"
    assert shown["tracking"]["uri"] == "http://mlflow:5000"
    assert shown["serving"]["prediction_log_url"].startswith("postgresql://flywheel:***@postgres")
    assert shown["store"]["url"] == "s3://flywheel/data"
    if service == "flywheel-serve":
        assert shown["serving"]["host"] == "0.0.0.0"
        assert shown["admin_token"] == "***"


def test_an_s3_store_needs_s3fs_in_the_train_image() -> None:
    """The stack keeps snapshots in MinIO (store.url s3://) and MLflow's artifacts there too:
    the train image (main.lock) must carry s3fs and boto3, or ingest and the MLflow server
    fail at their first S3 call."""
    stack = yaml.safe_load((DEPLOY / "flywheel.yaml").read_text())
    assert stack["store"]["url"].startswith("s3://")
    lock = (REPO / "requirements" / "main.lock").read_text()
    missing = [p for p in ("s3fs", "boto3") if not re.search(rf"^{p}==", lock, re.M)]
    assert not missing, f"requirements/main.lock lacks {missing} (the s3 extra)"


# --------------------------------------------------------------------------- workflows

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def test_workflows_match_the_github_schema() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "ct.yml", "cd.yml"}
    proc = run(
        tool("check-jsonschema"),
        "--builtin-schema",
        "vendor.github-workflows",
        *map(str, WORKFLOWS),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actions_are_pinned_by_commit() -> None:
    by_tag = {"hashicorp/setup-terraform@v3"}  # no commit found to pin it by (docs/ci-cd.md)
    for path in WORKFLOWS:
        for ref in re.findall(r"uses:\s*(\S+)", path.read_text()):
            if ref.startswith("./") or ref in by_tag:
                continue
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{path.name}: {ref}"


def test_ci_runs_make_test_with_postgres_and_mosquitto() -> None:
    ci = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    job = ci["jobs"]["test"]
    assert job["services"]["postgres"]["image"].startswith("postgres:")
    assert job["services"]["mosquitto"]["image"].startswith("eclipse-mosquitto:")
    assert any("make test" in step.get("run", "") for step in job["steps"])


def test_cd_deploys_dev_staging_prod_and_rolls_back() -> None:
    cd = yaml.safe_load((REPO / ".github" / "workflows" / "cd.yml").read_text())
    chain = [cd["jobs"][j]["with"]["environment"] for j in ("deploy-dev", "deploy-staging")]
    chain.append(cd["jobs"]["deploy-prod"]["with"]["environment"])
    assert chain == ["dev", "staging", "prod"]
    assert "deploy-staging" in cd["jobs"]["deploy-prod"]["needs"]
    deploy = (REPO / ".github" / "workflows" / "deploy.yml").read_text()
    assert 'kubectl -n "$NAMESPACE" rollout status deployment/flywheel-serve' in deploy
    assert "rollout undo deployment/flywheel-serve" in deploy


# --------------------------------------------------------------------------- Kubernetes


def kustomize(path: str) -> list[dict[str, Any]]:
    proc = run(tool("kubectl"), "kustomize", str(K8S / path))
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {path: kustomize(path) for path in BUILDS}


def objects(built: dict[str, list[dict[str, Any]]], kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(path, d) for path, docs in built.items() for d in docs if d["kind"] == kind]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return list(spec["template"]["spec"]["containers"])


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec["template"]["spec"])


WORKLOADS = ("Deployment", "Job", "CronJob")


def test_strict_validation_refuses_an_unknown_field() -> None:
    """The validator below is not a rubber stamp: a misspelt field fails in strict mode."""
    import kubernetes_validate

    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPort": 8080, "protocl": "TCP"}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_every_object_is_valid_kubernetes_1_32(built: dict[str, list[dict[str, Any]]]) -> None:
    import kubernetes_validate

    crds = []
    for _path, docs in built.items():
        for doc in docs:
            if doc["apiVersion"] == "monitoring.coreos.com/v1":
                crds.append(doc)  # not in the Kubernetes schemas: checked below
                continue
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert [d["kind"] for d in crds] == ["ServiceMonitor"]


def test_the_service_monitor_scrapes_the_serving_service(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    """ServiceMonitor (monitoring.coreos.com/v1, a CRD): the fields the operator needs, and
    that they select the flywheel-serve Service and a port it has."""
    [(path, monitor)] = objects(built, "ServiceMonitor")
    assert path == "overlays/prod"
    assert monitor["metadata"]["name"] and monitor["metadata"]["namespace"] == "flywheel"
    spec = monitor["spec"]
    assert set(spec) <= {"jobLabel", "selector", "endpoints", "namespaceSelector"}
    [service] = [d for d in built[path] if d["kind"] == "Service"]
    labels = service["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert labels[spec["jobLabel"]] == "flywheel"  # job="flywheel", as compose scrapes it
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert endpoint["port"] in ports and endpoint["path"] in serving_routes()


def test_serving_deployment_probes_rollout_and_security(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    routes = serving_routes()
    for path, deploy in objects(built, "Deployment"):
        if deploy["metadata"]["name"] != "flywheel-serve":
            continue
        assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        [serve] = containers(deploy)
        assert serve["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert serve["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert serve[probe]["httpGet"]["path"] in routes
        assert serve["resources"]["requests"]["cpu"] and serve["resources"]["limits"]["memory"]
        port_names = {p["name"] for p in serve["ports"]}
        assert {"http", "grpc"} <= port_names, path


def test_every_pod_runs_as_a_user_on_a_read_only_root(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    for kind in WORKLOADS:
        for path, doc in objects(built, kind):
            pod = pod_spec(doc)
            assert pod["securityContext"]["runAsNonRoot"] is True, (path, kind)
            assert pod["securityContext"]["runAsUser"] == 10001
            assert pod["automountServiceAccountToken"] is False
            for c in containers(doc):
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True and not sc["allowPrivilegeEscalation"]
                assert sc["capabilities"]["drop"] == ["ALL"]
                mounts = {m["mountPath"] for m in c["volumeMounts"]}
                assert {"/tmp", "/var/lib/flywheel"} <= mounts, (path, kind)


def test_k8s_flywheel_variables_are_real_and_secrets_are_referenced(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    names = env_names()
    for kind in WORKLOADS:
        for path, doc in objects(built, kind):
            for c in containers(doc):
                for var in c.get("env", []):
                    if var["name"].startswith("FLYWHEEL_"):
                        assert var["name"] in names, (path, doc["metadata"]["name"], var["name"])
                    assert "value" in var or "valueFrom" in var
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] == "flywheel-secrets" and ref["key"] in SECRET_KEYS
                    if re.search(r"URL|TOKEN|KEY|SECRET|PASSWORD", var["name"]):
                        assert "value" not in var, f"{var['name']} in plain text"
    assert not objects(built, "Secret")  # never committed


def test_the_configmap_is_valid_flywheel_settings(tmp_path: Path) -> None:
    config = K8S / "base" / "flywheel.yaml"
    shown = config_show(
        {"FLYWHEEL_CONFIG": str(config), "FLYWHEEL_HOME": str(tmp_path / "h")}, tmp_path
    )
    assert shown["serving"]["host"] == "0.0.0.0" and shown["serving"]["grpc_port"] == 8081
    assert shown["tracking"]["uri"].startswith("http://")


def test_hpa_pdb_worker_cronjob_and_gpu_job(built: dict[str, list[dict[str, Any]]]) -> None:
    for _path, hpa in objects(built, "HorizontalPodAutoscaler"):
        kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
        assert kinds["Resource"]["resource"]["name"] == "cpu"
        assert kinds["Pods"]["pods"]["metric"]["name"] == "flywheel_requests_per_second"
    adapter = (K8S / "prometheus-adapter" / "values.yaml").read_text()
    assert "flywheel_requests_total" in adapter and "flywheel_requests_per_second" in adapter
    assert len(objects(built, "PodDisruptionBudget")) == 2
    for _path, deploy in objects(built, "Deployment"):
        if deploy["metadata"]["name"] == "flywheel-worker":
            assert deploy["spec"]["replicas"] == 1
            assert deploy["spec"]["strategy"]["type"] == "Recreate"
            [worker] = containers(deploy)
            assert worker["args"][0] == "worker"
            cmd = worker["livenessProbe"]["exec"]["command"]
            assert cmd == ["flywheel", "worker", "--healthcheck"]
    for _path, cron in objects(built, "CronJob"):
        [c] = containers(cron)
        assert c["args"][:2] == ["retrain", "--wait"]
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    gpu = next(d for d in built["jobs/train-gpu"] if d["kind"] == "Job")
    cpu = next(d for d in built["jobs/train"] if d["kind"] == "Job")
    [c] = containers(gpu)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod_spec(gpu)["nodeSelector"] and pod_spec(gpu)["tolerations"]
    assert "nvidia.com/gpu" not in containers(cpu)[0]["resources"]["limits"]
    namespaces = {
        path: {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
        for path, docs in built.items()
    }
    assert namespaces["overlays/dev"] == {"flywheel-dev"}
    assert namespaces["overlays/prod"] == {"flywheel"}


# --------------------------------------------------------------------------- Terraform

TERRAFORM = DEPLOY / "terraform"


def test_terraform_is_formatted() -> None:
    proc = run(tool("terraform"), "fmt", "-check", "-recursive", "-diff", str(TERRAFORM))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_terraform_variables_are_declared_used_and_in_the_example() -> None:
    """What `terraform validate` would say about variables, without the provider download
    it needs (not possible here)."""
    code = "\n".join(p.read_text() for p in TERRAFORM.glob("*.tf"))
    declared = set(re.findall(r'^variable "(\w+)"', code, re.M))
    used = set(re.findall(r"\bvar\.(\w+)", code))
    assert used == declared, used ^ declared
    example = (TERRAFORM / "terraform.tfvars.example").read_text()
    required = {
        name
        for name in declared
        if "default" not in code.split(f'variable "{name}"')[1].split("\nvariable ")[0]
    }
    assert required <= set(re.findall(r"^(\w+)\s*=", example, re.M))
    for resource in (
        "aws_s3_bucket_versioning",
        "aws_s3_bucket_server_side_encryption_configuration",
        "aws_s3_bucket_public_access_block",
        "aws_db_instance",
    ):
        assert f'resource "{resource}"' in code
    assert "manage_master_user_password = true" in code
    assert not re.search(r"^\s*password\s*=", code, re.M)  # no password in code or state
