"""deploy/ stays in step with the code.

No Docker engine or Kubernetes cluster here: these tests read the files. Every YAML file parses;
every `CRUMB_*` name under deploy/ is a real setting; the compose services and the Kubernetes
objects refer to each other correctly; the ClickHouse cluster config is well-formed and
consistent; and every migration renders for a cluster with ON CLUSTER and Replicated engines.
"""

from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from crumb import migrations
from crumb.migrations import Dialect, all_migrations
from crumb.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
CLICKHOUSE = DEPLOY / "clickhouse"

SETTING_NAMES = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
# Named in the docs only as what Kubernetes would inject for the Service `crumb` (and why
# enableServiceLinks is off): not settings, never set by us.
NOT_SETTINGS_ON_PURPOSE = {"CRUMB_SERVICE_HOST"}
CRUMB_NAME = re.compile(r"\bCRUMB_[A-Z0-9_]*[A-Z0-9]\b")
COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
XML_FILES = sorted(CLICKHOUSE.rglob("*.xml"))


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _load_one(path: Path) -> dict[str, Any]:
    (doc,) = _load_all(path)
    return doc


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- every file -------------------------------------------------------------------------------


def test_the_deploy_tree_has_its_parts() -> None:
    for name in [
        "README.md", "Dockerfile", "compose.yaml",
        "kubernetes/kustomization.yaml", "clickhouse/README.md", "redis/README.md",
    ]:
        assert (DEPLOY / name).is_file(), name
    assert len(YAML_FILES) >= 5
    assert len(XML_FILES) >= 3


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_parses(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{_rel(path)} has no YAML documents"
    for doc in docs:
        assert isinstance(doc, dict), f"{_rel(path)}: a document that is not a mapping"


def test_every_crumb_name_under_deploy_is_a_setting() -> None:
    unknown: dict[str, set[str]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for name in set(CRUMB_NAME.findall(text)) - SETTING_NAMES - NOT_SETTINGS_ON_PURPOSE:
            unknown.setdefault(name, set()).add(_rel(path))
    assert not unknown, f"CRUMB_* names that are not fields of crumb.settings.Settings: {unknown}"


# --- the image ------------------------------------------------------------------------------


def test_dockerfile_builds_the_distribution_and_serves() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install" in text
    assert re.search(r'CMD \["serve", "--host", "0\.0\.0\.0"\]', text)
    assert re.search(r'ENTRYPOINT \["crumb"\]', text)


def test_dockerignore_keeps_every_package_of_the_distribution() -> None:
    """The context is whitelisted: a package added to pyproject must be let through too."""
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = pyproject["tool"]["setuptools"]["packages"]
    top_level = {p.split(".")[0] for p in packages}
    for package in top_level | {"pyproject.toml"}:
        assert f"!{package}/" in ignore or f"!{package}" in ignore, package


# --- compose --------------------------------------------------------------------------------


COMPOSE_FILES = [DEPLOY / "compose.yaml", CLICKHOUSE / "compose.yaml"]


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    return {name: {} for name in deps} if isinstance(deps, list) else dict(deps)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default}, with nothing set in the environment."""
    return COMPOSE_VAR.sub(lambda m: m.group(2) or "", value)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=_rel)
def test_compose_references_only_what_exists(path: Path) -> None:
    compose = _load_one(path)
    services = compose["services"]
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for dep, condition in _depends_on(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            if condition:
                assert condition.get("condition") in (
                    "service_started", "service_healthy", "service_completed_successfully",
                )
            if (condition or {}).get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: no healthcheck"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/", "~")):
                assert (path.parent / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared_volumes, f"{name} uses undeclared volume {source}"


def test_compose_crumb_services() -> None:
    services = _load_one(DEPLOY / "compose.yaml")["services"]
    assert {"clickhouse", "redis", "migrate", "crumb"} <= set(services)

    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server")
    ch_env = _environment(services["clickhouse"])
    assert ch_env["CLICKHOUSE_DB"] == "crumb"
    assert ch_env["CLICKHOUSE_USER"] == "crumb" and ch_env["CLICKHOUSE_PASSWORD"]
    assert services["redis"]["image"].startswith("redis:7")
    assert "appendonly" in " ".join(services["redis"]["command"])

    migrate, crumb = services["migrate"], services["crumb"]
    assert migrate["command"][0] == "migrate"
    assert crumb["command"][:3] == ["serve", "--host", "0.0.0.0"]
    for service in (migrate, crumb):
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert _depends_on(crumb)["migrate"]["condition"] == "service_completed_successfully"
    assert _depends_on(crumb)["redis"]["condition"] == "service_healthy"
    assert _depends_on(migrate)["clickhouse"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(crumb["healthcheck"]["test"])
    assert int(crumb["stop_grace_period"].rstrip("s")) >= 40
    assert any(str(v).endswith(":/var/lib/crumb") for v in crumb["volumes"])


@pytest.mark.parametrize("service_name", ["migrate", "crumb"])
def test_compose_crumb_environment_is_valid_settings(service_name: str) -> None:
    service = _load_one(DEPLOY / "compose.yaml")["services"][service_name]
    env = {k: _interpolate(v) for k, v in _environment(service).items()}
    crumb_env = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    assert set(crumb_env) <= SETTING_NAMES
    settings = load_settings(crumb_env)
    assert settings.clickhouse_url == "http://crumb:crumb@clickhouse:8123/crumb"
    assert not settings.embedded_warehouse
    assert settings.redis_url == "redis://redis:6379/0"
    # The ClickHouse URL's password is the one the clickhouse service is given.
    ch_env = _load_one(DEPLOY / "compose.yaml")["services"]["clickhouse"]["environment"]
    assert _environment(service)["CRUMB_CLICKHOUSE_URL"].split("@")[0].endswith(ch_env["CLICKHOUSE_PASSWORD"])


# --- Kubernetes -----------------------------------------------------------------------------


def _kustomization() -> dict[str, Any]:
    return _load_one(K8S / "kustomization.yaml")


def _k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for resource in _kustomization()["resources"]:
        objects.extend(_load_all(K8S / resource))
    return objects


def _one(kind: str, name: str | None = None, objects: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    found = [o for o in (objects or _k8s_objects())
             if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]["containers"][0]


def _server_workload() -> dict[str, Any]:
    workloads = [o for o in _k8s_objects() if o["kind"] in ("Deployment", "StatefulSet")]
    serving = [w for w in workloads if "serve" in _container(w).get("args", [])]
    assert len(serving) == 1, "one Deployment or StatefulSet runs `crumb serve`"
    return serving[0]


def _secret_template() -> dict[str, Any]:
    return _one("Secret", "crumb-secrets", _load_all(K8S / "secret.example.yaml"))


def test_kustomization_resources_exist_and_leave_out_the_secret_template() -> None:
    resources = _kustomization()["resources"]
    for resource in resources:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in resources
    for obj in _k8s_objects():
        assert {"apiVersion", "kind", "metadata"} <= set(obj), obj


def test_server_workload_probes_grace_and_resources() -> None:
    workload = _server_workload()
    assert workload["spec"]["replicas"] >= 2
    pod = workload["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 40
    (container,) = pod["containers"]
    assert container["args"][:3] == ["serve", "--host", "0.0.0.0"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/healthz", probe
        assert http["port"] in ports or http["port"] in ports.values(), probe
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]


def test_server_workload_selector_labels_and_service() -> None:
    workload = _server_workload()
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = _one("Service", "crumb")
    assert service["spec"]["selector"].items() <= labels.items()
    container_ports = {p["name"] for p in _container(workload)["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports
    if workload["kind"] == "StatefulSet":
        headless = _one("Service", workload["spec"]["serviceName"])
        assert headless["spec"]["clusterIP"] == "None"


def test_pods_get_no_service_link_variables() -> None:
    """Kubernetes injects CRUMB_SERVICE_HOST etc. for the Service `crumb`; load_settings rejects them."""
    pods = [_server_workload()["spec"]["template"]["spec"], _one("Job")["spec"]["template"]["spec"]]
    services = [o["metadata"]["name"] for o in _k8s_objects() if o["kind"] == "Service"]
    assert any(name.upper().startswith("CRUMB") for name in services)
    for pod in pods:
        assert pod.get("enableServiceLinks") is False


def _pod_settings(pod: dict[str, Any]) -> dict[str, str]:
    """The CRUMB_* environment a pod gets from its envFrom sources and env (secret: the template)."""
    configmaps = {o["metadata"]["name"]: o for o in _k8s_objects() if o["kind"] == "ConfigMap"}
    secret = _secret_template()
    env: dict[str, str] = {}
    (container,) = pod["containers"]
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]]["data"])
        else:
            assert source["secretRef"]["name"] == secret["metadata"]["name"]
            env.update(secret["stringData"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return {k: str(v) for k, v in env.items()}


def test_server_settings_are_valid_and_shared_across_replicas() -> None:
    workload = _server_workload()
    env = _pod_settings(workload["spec"]["template"]["spec"])
    settings = load_settings(env)
    # Several replicas: one shared warehouse server, one shared Redis, one signing key.
    assert not settings.embedded_warehouse, "the embedded warehouse is for one process only"
    assert settings.redis_url, "without CRUMB_REDIS_URL each pod would start its own Redis"
    for name in ("CRUMB_SECRET_KEY", "CRUMB_ADMIN_TOKEN", "CRUMB_CLICKHOUSE_URL"):
        assert name in _secret_template()["stringData"], name
    # The data dir (and so the spool) is on a volume of the pod.
    mounts = {m["mountPath"]: m["name"] for m in _container(workload)["volumeMounts"]}
    data_volume = mounts[str(settings.data_dir)]
    if workload["kind"] == "StatefulSet":
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in workload["spec"]["template"]["spec"].get("volumes", [])}
        assert data_volume in claims | volumes
    assert settings.port == int(_container(workload)["ports"][0]["containerPort"])


def test_migration_job() -> None:
    job = _one("Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    (container,) = pod["containers"]
    assert container["args"] == ["migrate"]
    settings = load_settings(_pod_settings(pod))
    assert settings.clickhouse_cluster == _cluster_name()
    assert container["image"] == _container(_server_workload())["image"]


def test_the_kustomization_lists_existing_manifests_of_every_kind() -> None:
    """What `kubectl kustomize` would assemble (kubectl is not part of the test machine)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    paths = [K8S / name for name in kustomization["resources"]]
    assert all(path.exists() for path in paths)
    kinds = {doc["kind"] for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc}
    assert {"ConfigMap", "Service", "Job"} <= kinds
    assert kinds & {"Deployment", "StatefulSet"}


# --- ClickHouse cluster config --------------------------------------------------------------


def _xml(name: str) -> ET.Element:
    return ET.parse(CLICKHOUSE / name).getroot()


def _cluster_name() -> str:
    return _one("ConfigMap", "crumb-config")["data"]["CRUMB_CLICKHOUSE_CLUSTER"]


@pytest.mark.parametrize("path", XML_FILES, ids=_rel)
def test_clickhouse_xml_is_well_formed(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag == "clickhouse"


def _has_value(element: ET.Element | None) -> bool:
    return element is not None and bool((element.text or "").strip() or element.get("from_env"))


def _shards() -> list[list[str]]:
    cluster = _xml("config.d/remote_servers.xml").find(f"remote_servers/{_cluster_name()}")
    assert cluster is not None, "remote_servers defines the cluster CRUMB_CLICKHOUSE_CLUSTER names"
    shards = []
    for shard in cluster.findall("shard"):
        assert shard.findtext("internal_replication") == "true"
        shards.append([replica.findtext("host") for replica in shard.findall("replica")])
    return shards


def test_remote_servers_define_the_crumb_cluster() -> None:
    assert _cluster_name() == "crumb"
    shards = _shards()
    assert len(shards) == 2 and all(len(hosts) == 2 for hosts in shards), "2 shards x 2 replicas"
    hosts = [h for hosts in shards for h in hosts]
    assert all(hosts) and len(set(hosts)) == len(hosts)


def test_macros_define_shard_and_replica() -> None:
    macros = _xml("config.d/macros.xml").find("macros")
    assert macros is not None
    assert _has_value(macros.find("shard")) and _has_value(macros.find("replica"))
    # The engine path `crumb migrate` writes uses exactly these macros.
    engine = Dialect(cluster="crumb").engine("MergeTree")
    assert "{shard}" in engine and "{replica}" in engine


def test_keeper_quorum_matches_the_servers_keeper_list() -> None:
    keeper = _xml("keeper/keeper_config.xml").find("keeper_server")
    assert keeper is not None and _has_value(keeper.find("server_id"))
    raft = [(s.findtext("id"), s.findtext("hostname")) for s in keeper.findall("raft_configuration/server")]
    assert len(raft) == 3 and len({i for i, _ in raft}) == 3
    nodes = _xml("config.d/keeper_client.xml").findall("zookeeper/node")
    client_nodes = [(n.findtext("host"), n.findtext("port")) for n in nodes]
    assert sorted(h for h, _ in client_nodes) == sorted(h for _, h in raft)
    assert {p for _, p in client_nodes} == {keeper.findtext("tcp_port")}


def test_cluster_compose_gives_each_node_its_macros() -> None:
    services = _load_one(CLICKHOUSE / "compose.yaml")["services"]
    shard_values = []
    for hosts in _shards():
        values = {_environment(services[host])["CLICKHOUSE_SHARD"] for host in hosts}
        assert len(values) == 1, f"replicas of one shard share {{shard}}: {hosts}"
        shard_values.append(values.pop())
        for host in hosts:
            assert _environment(services[host])["CLICKHOUSE_REPLICA"] == host
    assert len(set(shard_values)) == len(shard_values), "each shard has its own {shard}"
    keeper = _xml("keeper/keeper_config.xml").find("keeper_server")
    assert keeper is not None
    for server in keeper.findall("raft_configuration/server"):
        env = _environment(services[server.findtext("hostname")])
        assert env["KEEPER_SERVER_ID"] == server.findtext("id")


# --- migrations on a cluster ----------------------------------------------------------------


CLUSTER_ENGINE = re.compile(
    r"ENGINE\s*=\s*Replicated\w*MergeTree\("
    r"'/clickhouse/tables/\{shard\}/\{database\}/\{table\}', '\{replica\}'"
)


def _rendered(dialect: Dialect) -> list[tuple[str, str]]:
    return [(m.id, dialect.render(s)) for m in all_migrations() for s in m.statements]


def _is_data(sql: str) -> bool:
    """A migration's data statement (an INSERT ... SELECT) runs once, on the node Crumb talks to:
    replication carries it to the shard's replicas (Crumb runs one shard: clickhouse/README.md).
    INSERT has no ON CLUSTER."""
    return re.match(r"\s*INSERT\s+INTO", sql, re.I) is not None


def test_every_migration_renders_for_the_cluster() -> None:
    statements = _rendered(Dialect(cluster="crumb"))
    creates = [(mid, sql) for mid, sql in statements if re.match(r"\s*CREATE\s+TABLE", sql, re.I)]
    assert creates, "no CREATE TABLE among the migrations"
    for mid, sql in statements:
        if _is_data(sql):
            assert "ON CLUSTER" not in sql, f"{mid}: ON CLUSTER in an INSERT"
            continue
        assert "ON CLUSTER `crumb`" in sql, f"{mid}: DDL without ON CLUSTER"
        assert not re.search(r"\{(db|on_cluster|MergeTree|ReplacingMergeTree)\}", sql), f"{mid}: unrendered"
    for mid, sql in creates:
        assert CLUSTER_ENGINE.search(sql), f"{mid}: CREATE TABLE without a Replicated engine"


def test_migrations_render_plain_without_a_cluster() -> None:
    for mid, sql in _rendered(Dialect()):
        assert "ON CLUSTER" not in sql and "Replicated" not in sql, mid


class _RecordingClient:
    """Stands in for clickhouse-connect's Client: records DDL, has no migrations applied."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def command(self, sql: str, **_kwargs: Any) -> None:
        self.commands.append(sql)

    def query(self, _sql: str, **_kwargs: Any) -> Any:
        return type("Result", (), {"result_rows": []})()

    def insert(self, *_args: Any, **_kwargs: Any) -> None:
        pass


def test_migrate_on_a_cluster_runs_every_statement_on_cluster() -> None:
    """Including what `apply` itself issues (database, ledger) and the retention hook."""
    from audiences.schema import apply_history_retention
    from collector.schema import apply_retention

    client = _RecordingClient()
    dialect = Dialect(cluster="crumb")
    retention = [lambda c, d: apply_retention(c, d, 180), lambda c, d: apply_history_retention(c, d, 400)]
    applied = migrations.apply(client, dialect, after=retention)  # type: ignore[arg-type]
    assert applied == [m.id for m in all_migrations()]
    assert client.commands[0].startswith("CREATE DATABASE IF NOT EXISTS crumb ON CLUSTER `crumb`")
    for sql in client.commands:
        assert _is_data(sql) or "ON CLUSTER `crumb`" in sql, sql
        if re.match(r"\s*CREATE\s+TABLE", sql, re.I):
            assert CLUSTER_ENGINE.search(sql), sql
