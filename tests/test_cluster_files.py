"""The cluster launch files and job presets agree with each other and with the config schema (no Ray, no GPU)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from sefl_ray.cli import build_parser
from sefl_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]
JOB_FILES = sorted((REPO / "jobs").glob("*.yaml"))
SBATCH_FILES = sorted((REPO / "cluster").rglob("*.sbatch"))
CLUSTER_FILES = sorted(path for path in (REPO / "cluster").rglob("*") if path.is_file())
GPU_PRESETS = ["train_gpu.yaml", "train_multinode.yaml", "train_lora.yaml"]

SBATCH_LINE = re.compile(r"^#SBATCH[ \t]+--([\w-]+)(?:[ \t=]+(\S+))?", re.MULTILINE)
DEFAULT_CONFIG = re.compile(r'^CONFIG="\$\{CONFIG:-(jobs/[\w.-]+\.yaml)\}"', re.MULTILINE)
JOB_PATH = re.compile(r"\bjobs/[\w.-]+\.ya?ml\b")


def sbatch_options(path: Path) -> dict[str, str | None]:
    """The active `#SBATCH --key=value` lines (`##SBATCH` is commented out); a GPU type prefix is dropped."""
    options = {key: value for key, value in SBATCH_LINE.findall(path.read_text())}
    if options.get("gpus-per-node"):
        options["gpus-per-node"] = options["gpus-per-node"].rsplit(":", 1)[-1]
    return options


def default_config(path: Path) -> Path:
    match = DEFAULT_CONFIG.search(path.read_text())
    assert match, f"{path.name}: no CONFIG=\"${{CONFIG:-jobs/...yaml}}\" default"
    return REPO / match.group(1)


def test_the_files_exist():
    names = {path.name for path in JOB_FILES}
    assert set(GPU_PRESETS) <= names
    assert {path.name for path in SBATCH_FILES} == {"train_nvidia.sbatch", "train_amd_rocm.sbatch"}


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda path: path.name)
def test_every_job_yaml_validates(path):
    load_config(path)  # unknown keys and wrong types raise ConfigError


@pytest.mark.parametrize("name", GPU_PRESETS)
def test_gpu_presets_use_gpus(name):
    train = load_config(REPO / "jobs" / name).train
    assert train.use_gpu
    assert train.backend in ("auto", "nccl")
    assert train.precision == "auto"


def test_presets_say_what_they_promise():
    single = load_config(REPO / "jobs" / "train_gpu.yaml").train
    assert (single.num_workers, single.strategy, single.checkpoint_every_steps, single.max_failures) == (
        8, "fsdp2", 200, 2)
    assert single.activation_checkpointing and single.packing and single.max_seq_len == 2048
    multi = load_config(REPO / "jobs" / "train_multinode.yaml").train
    assert (multi.num_workers, multi.strategy, multi.placement_strategy) == (32, "fsdp2", "PACK")
    shared = multi.storage_path or ""
    assert shared.startswith("/") or "://" in shared, "multinode checkpoints need shared storage or a URI"
    lora = load_config(REPO / "jobs" / "train_lora.yaml").train
    assert lora.lora.enabled and lora.lora.r == 16 and lora.strategy == "ddp" and lora.lr == pytest.approx(2e-4)


@pytest.mark.parametrize("path", SBATCH_FILES, ids=lambda path: path.name)
def test_default_preset_fills_the_allocation(path):
    options = sbatch_options(path)
    nodes, gpus_per_node = int(options["nodes"]), int(options["gpus-per-node"])
    train = load_config(default_config(path)).train
    assert train.use_gpu
    assert train.num_workers == nodes * gpus_per_node, f"{path.name}: {nodes} nodes × {gpus_per_node} GPUs"
    assert options["ntasks-per-node"] == "1", "one `ray start` per node"
    cpus_per_node = int(options["cpus-per-task"])
    assert train.cpus_per_worker * gpus_per_node <= cpus_per_node, "workers ask for more CPUs than a node has"


@pytest.mark.parametrize("path", SBATCH_FILES, ids=lambda path: path.name)
def test_sbatch_scripts_parse_and_run_sefl_ray_train(path):
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the SLURM scripts"
    result = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    assert re.search(r"^sefl-ray train \"\$CONFIG\"", text, re.MULTILINE), "entrypoint is `sefl-ray train`"
    assert "ray start" in text and "--head" in text and "ray stop" in text


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_job_paths_named_in_cluster_files_exist(path):
    for job_path in JOB_PATH.findall(path.read_text()):
        assert (REPO / job_path).is_file(), f"{path.name} names {job_path}, which is not in the repo"


# -- KubeRay manifests, the Docker image, `ray up` and the presets they run ----------------------------------------

KUBERAY_KINDS = {"raycluster.yaml": "RayCluster", "rayjob_synth.yaml": "RayJob", "rayjob_train.yaml": "RayJob",
                 "rayservice.yaml": "RayService"}
KUBERAY_FILES = sorted((REPO / "cluster" / "kuberay").glob("*.yaml"))
RAYJOB_FILES = [path for path in KUBERAY_FILES if KUBERAY_KINDS.get(path.name) == "RayJob"]
CLUSTER_YAML_FILES = sorted((REPO / "cluster").rglob("*.yaml"))
DOCKERFILE = REPO / "cluster" / "docker" / "Dockerfile"
RAY_UP = REPO / "cluster" / "ray_up" / "cluster.yaml"
GPU_RESOURCE_NAMES = ("nvidia.com/gpu", "amd.com/gpu")

BASE_IMAGE = re.compile(r"^FROM\s+(rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)(?:-gpu)?)\s*$", re.MULTILINE)
SEFL_RAY_COMMAND = re.compile(r"\bsefl-ray ([\w-]+) (jobs/[\w.-]+\.ya?ml)\b")


def read_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def ray_cluster_spec(manifest: dict) -> dict:
    """The RayCluster spec inside any KubeRay kind."""
    key = {"RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}.get(manifest["kind"])
    return manifest["spec"][key] if key else manifest["spec"]


def pod_groups(cluster: dict) -> list[tuple[str, dict]]:
    """(group name, group spec) for the head and every worker group."""
    return [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]


def containers(cluster: dict) -> list[tuple[str, dict, dict]]:
    """(group name, pod spec, container) of every container in the cluster."""
    return [(name, group["template"]["spec"], container) for name, group in pod_groups(cluster)
            for container in group["template"]["spec"]["containers"]]


def cpu_count(quantity) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay starts Ray in the first container


def gpus_per_pod(group: dict) -> int:
    limits = ray_container(group)["resources"]["limits"]
    return sum(int(limits.get(name, 0)) for name in GPU_RESOURCE_NAMES)


def cpus_per_pod(group: dict) -> float:
    if "num-cpus" in group.get("rayStartParams", {}):
        return float(group["rayStartParams"]["num-cpus"])
    return cpu_count(ray_container(group)["resources"]["limits"]["cpu"])


def shared_mounts(pod_spec: dict, container: dict) -> list[str]:
    """Mount paths of the container's PersistentVolumeClaim volumes: storage every pod of the cluster sees."""
    claims = {volume["name"] for volume in pod_spec.get("volumes", []) if "persistentVolumeClaim" in volume}
    return [mount["mountPath"] for mount in container.get("volumeMounts", []) if mount["name"] in claims]


def assert_on_shared_storage(cluster: dict, path: str, what: str) -> None:
    assert path.startswith("/"), f"{what} {path!r} is relative: it would land in the driver's working dir"
    for group, pod_spec, container in containers(cluster):
        mounts = shared_mounts(pod_spec, container)
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), (
            f"{what} {path} is not on a PVC mounted in the {group} pods (mounts: {mounts})")


def parse_cli(argv: list[str]):
    """The real `sefl-ray` parser: an unknown stage or a missing config exits, which fails the test."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`sefl-ray {' '.join(argv)}` is not a valid sefl-ray command")


def entrypoint_config(manifest: dict):
    """The config a RayJob's entrypoint runs, with its --set overrides applied."""
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[0] == "sefl-ray", "the entrypoint runs the sefl-ray CLI"
    args = parse_cli(argv[1:])
    assert (REPO / args.config).is_file(), f"{args.config} is not in the repo (the image copies jobs/ from it)"
    return args, load_config(REPO / args.config, args.overrides)


def dockerfile_base() -> tuple[str, str, str]:
    """(image, Ray version, Python minor) of the Dockerfile's FROM line."""
    match = BASE_IMAGE.search(DOCKERFILE.read_text())
    assert match, "cluster/docker/Dockerfile must start FROM rayproject/ray:<version>-py3<minor>[-gpu]"
    return match.group(1), match.group(2), match.group(3)


def test_kuberay_docker_and_ray_up_files_exist():
    assert {path.name for path in KUBERAY_FILES} == set(KUBERAY_KINDS)
    assert DOCKERFILE.is_file() and RAY_UP.is_file()
    assert (REPO / "jobs" / "synth_scale.yaml").is_file()
    assert (REPO / "serve_configs" / "feedback_autoscaling.yaml").is_file()


@pytest.mark.parametrize("path", CLUSTER_YAML_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_cluster_yaml_parses(path):
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents and all(isinstance(document, dict) for document in documents)


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda path: path.name)
def test_kuberay_manifests_are_well_formed(path):
    [manifest] = yaml.safe_load_all(path.read_text())
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == KUBERAY_KINDS[path.name]
    cluster = ray_cluster_spec(manifest)
    assert cluster["rayVersion"] == dockerfile_base()[1], "rayVersion must be the image's Ray version"
    names = [name for name, _ in pod_groups(cluster)]
    assert len(set(names)) == len(names), f"group names repeat: {names}"
    for name, group in pod_groups(cluster):
        params = group.get("rayStartParams", {})
        # The CRD types rayStartParams as strings: `num-cpus: 0` (an int) is rejected by the API server.
        assert all(isinstance(value, str) for value in params.values()), f"{name}: quote rayStartParams values"
        if name != "head":
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
    for name, pod_spec, container in containers(cluster):
        volumes = {volume["name"] for volume in pod_spec.get("volumes", [])}
        missing = {mount["name"] for mount in container.get("volumeMounts", [])} - volumes
        assert not missing, f"{name} pods mount volumes they do not define: {missing}"
        resources = container["resources"]
        assert resources["limits"] == resources["requests"], f"{name}: Ray sizes itself from limits; keep equal"


def test_kuberay_names_do_not_collide():
    # A RayCluster and a RayService of the same name would both create the Service <name>-head-svc.
    names = [read_yaml(path)["metadata"]["name"] for path in KUBERAY_FILES]
    assert len(set(names)) == len(names), names


def test_one_image_whose_ray_satisfies_pyproject():
    images = {container["image"] for path in KUBERAY_FILES
              for _, _, container in containers(ray_cluster_spec(read_yaml(path)))}
    assert len(images) == 1, f"every KubeRay pod must run the same image (and Ray version): {images}"
    [image] = images
    assert image.rsplit(":", 1)[-1] != "latest", "pin a tag: pods of one cluster could pull different builds"
    assert image.split("/")[-1].split(":")[0] == "sefl-ray", "the image built from cluster/docker/Dockerfile"

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [ray_requirement] = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "ray"]
    base_image, ray_version, python_minor = dockerfile_base()
    assert ray_requirement.specifier.contains(ray_version), f"{base_image}: pyproject wants {ray_requirement}"
    assert SpecifierSet(project["requires-python"]).contains(f"3.{python_minor}"), base_image
    assert read_yaml(RAY_UP)["docker"]["image"] == base_image, "ray up runs the Dockerfile's base Ray image"
    dockerfile = DOCKERFILE.read_text()
    # RayJob entrypoints name presets relative to the driver's working dir: the image must hold them there.
    assert re.search(r"^WORKDIR /home/ray/sefl-ray$", dockerfile, re.MULTILINE)
    assert re.search(r"^COPY .*\bjobs \./jobs$", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN pip install .*\s\.(\s|$)", dockerfile, re.MULTILINE), "the image pip-installs the repo"


def test_sefl_ray_commands_in_cluster_files_name_real_stages_and_presets():
    found = {path.relative_to(REPO).as_posix(): SEFL_RAY_COMMAND.findall(path.read_text()) for path in CLUSTER_FILES}
    assert found["cluster/ray_up/cluster.yaml"] and found["cluster/README.md"], "their usage examples name presets"
    for stage, job_path in sorted({command for commands in found.values() for command in commands}):
        args = parse_cli([stage, job_path])
        load_config(REPO / args.config)


@pytest.mark.parametrize("path", RAYJOB_FILES, ids=lambda path: path.name)
def test_rayjob_runs_a_preset_on_shared_storage_with_its_keys(path):
    manifest = read_yaml(path)
    args, config = entrypoint_config(manifest)
    assert args.command in {"synth", "train"}
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True, "a RayJob's cluster should not outlive its job"
    cluster = ray_cluster_spec(manifest)
    assert_on_shared_storage(cluster, config.run_dir, "run_dir")
    if args.command == "train":
        assert_on_shared_storage(cluster, config.train.storage_path, "train.storage_path")
        assert_on_shared_storage(cluster, config.train.dataset, "train.dataset")
    # The driver checks the keys before starting and the actors on the workers call with them: every pod needs them.
    key_vars = set()
    if args.command == "synth":
        roles = config.synth.endpoint_names("teacher") + config.synth.endpoint_names("student")
        key_vars = {config.endpoint(name).api_key_env for name in roles} - {None}
        assert key_vars == {"OPENAI_API_KEY"}
    for group, _, container in containers(cluster):
        from_secrets = {env["name"] for env in container.get("env", []) if "secretKeyRef" in env.get("valueFrom", {})}
        assert key_vars <= from_secrets, f"{path.name}: {group} pods lack {key_vars - from_secrets}"


def test_rayjob_train_fills_its_gpus():
    manifest = read_yaml(REPO / "cluster" / "kuberay" / "rayjob_train.yaml")
    args, config = entrypoint_config(manifest)
    assert (args.command, Path(args.config).name) == ("train", "train_gpu.yaml")
    train = config.train
    gpu_groups = [group for _, group in pod_groups(ray_cluster_spec(manifest)) if gpus_per_pod(group)]
    assert gpu_groups, "no worker group with GPUs"
    total = sum(group["replicas"] * gpus_per_pod(group) for group in gpu_groups)
    assert total == train.num_workers, f"{total} GPUs for {train.num_workers} workers"
    for group in gpu_groups:
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"], "a job's cluster has a fixed size"
        assert cpus_per_pod(group) >= train.cpus_per_worker * gpus_per_pod(group), (
            f"{group['groupName']}: {gpus_per_pod(group)} workers × {train.cpus_per_worker} CPUs do not fit "
            f"{cpus_per_pod(group)} CPUs")


def test_rayservice_apps_validate_and_fit_the_gpu_group():
    from sefl_ray.serve.app import load_app_config  # imports Ray Serve: only in the tests that need it

    path = REPO / "cluster" / "kuberay" / "rayservice.yaml"
    manifest = read_yaml(path)
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert serve_config["http_options"]["host"] == "0.0.0.0", "the serve Service reaches the proxies from outside"
    apps = serve_config["applications"]
    assert {app["name"] for app in apps} == {"feedback", "judge"}
    prefixes = [app["route_prefix"] for app in apps]
    assert len(set(prefixes)) == len(prefixes)
    configs = {}
    for app in apps:
        module, _, attribute = app["import_path"].partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), app["import_path"]
        configs[app["name"]] = config = load_app_config(app["args"])
        assert config.num_gpus >= 1 and config.autoscaling is not None, f"{app['name']}: GPU and autoscaling"
        assert config.engine == "vllm", f"{app['name']}: GPU replicas serve with vLLM"
    cluster = ray_cluster_spec(manifest)
    assert cluster.get("enableInTreeAutoscaling") is True, "without the autoscaler new replicas get no pods"
    [gpu_group] = [group for _, group in pod_groups(cluster) if gpus_per_pod(group)]
    gpus, cpus = gpus_per_pod(gpu_group), cpus_per_pod(gpu_group)
    for name, config in configs.items():
        assert config.num_gpus <= gpus and config.num_cpus <= cpus, f"a {name} replica does not fit one pod"
    # Replicas never share a pod here (GPUs are whole), so the group must have a pod for every replica at max.
    for bound, pods in (("max_replicas", gpu_group["maxReplicas"]), ("min_replicas", gpu_group["minReplicas"])):
        needed = sum(getattr(c.autoscaling, bound) * c.num_gpus for c in configs.values())
        assert needed <= pods * gpus, f"{bound}: {needed} GPUs wanted, the group has {pods * gpus}"
    # It serves what rayjob_train.yaml produces: train_gpu's merged model, on the PVC.
    train_config = load_config(REPO / "jobs" / "train_gpu.yaml")
    assert configs["feedback"].model == f"{train_config.run_dir}/train/merged"
    assert_on_shared_storage(cluster, configs["feedback"].model, "the feedback model")


def test_ray_up_yaml_is_valid_and_fits_the_gpu_presets():
    config = read_yaml(RAY_UP)
    # Ray's own schema for `ray up` files, found without importing ray.
    ray_dir = Path(importlib.util.find_spec("ray").submodule_search_locations[0])
    jsonschema.validate(config, json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text()))
    assert config["provider"]["type"] == "aws"
    node_types = config["available_node_types"]
    assert config["head_node_type"] in node_types
    workers = {name: t for name, t in node_types.items() if name != config["head_node_type"]}
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]
    assert any(t["resources"].get("GPU", 0) == 0 < t["resources"].get("CPU", 0) for t in workers.values()), "CPU"
    for preset in ("train_gpu.yaml", "train_multinode.yaml"):
        train = load_config(REPO / "jobs" / preset).train
        fits = [name for name, t in workers.items() if t["resources"].get("GPU", 0) > 0
                and t["max_workers"] * t["resources"]["GPU"] >= train.num_workers
                and t["resources"]["CPU"] >= train.cpus_per_worker * min(t["resources"]["GPU"], train.num_workers)]
        assert fits, f"no worker type holds {preset}'s {train.num_workers} workers × {train.cpus_per_worker} CPUs"
    assert config["file_mounts"] == {"~/sefl-ray": "."}
    assert any("pip install" in command and "~/sefl-ray" in command for command in config["setup_commands"])


def test_synth_scale_shares_roles_over_several_endpoints_within_limits():
    config = load_config(REPO / "jobs" / "synth_scale.yaml")
    synth = config.synth
    teachers, students = synth.endpoint_names("teacher"), synth.endpoint_names("student")
    assert len(teachers) >= 3 and len(students) >= 3
    assert set(teachers) & set(students), "our own servers play both roles"
    endpoints = [config.endpoint(name) for name in dict.fromkeys(teachers + students)]  # unknown names raise
    servers = {endpoint.base_url for endpoint in endpoints}
    assert "https://api.openai.com/v1" in servers and len(servers) >= 3, servers
    for endpoint in endpoints:
        if endpoint.price_output_per_1m:  # a vendor's paid API: its account limits hold across the run
            assert endpoint.rpm and endpoint.tpm and endpoint.api_key_env, endpoint.name
        assert endpoint.price_input_per_1m is not None, f"{endpoint.name}: no price, so no cost and no budget"
    assert synth.budget_usd and synth.num_actors >= 4 and synth.concurrency >= 256
    # As the synth stage computes it: conversations in flight per actor must fit each endpoint's per-process cap,
    # or synth.concurrency is never reached (the stage warns).
    per_actor = -(-synth.concurrency // (synth.num_actors * synth.batch_size)) * synth.batch_size
    assert all(per_actor <= e.max_concurrency for e in endpoints), per_actor
    assert config.run_dir.startswith("/"), "ray job submit runs the driver in a temporary dir"


def test_feedback_autoscaling_serves_both_apps_on_gpus():
    from sefl_ray.serve.app import load_app_config

    config = read_yaml(REPO / "serve_configs" / "feedback_autoscaling.yaml")
    apps = {app["name"]: load_app_config(app["args"]) for app in config["applications"]}
    assert set(apps) == {"feedback", "judge"}
    for name, app in apps.items():
        assert app.num_gpus >= 1 and app.engine == "vllm" and app.dtype == "bfloat16", name
        assert app.autoscaling and app.autoscaling.max_replicas > app.autoscaling.min_replicas >= 1, name
        assert app.max_ongoing_requests >= app.autoscaling.target_ongoing_requests, name


def test_the_gpu_preset_runs_infer_on_gpus_with_vllm():
    """The pipeline on train_gpu.yaml's node runs its infer stage as vLLM engines on GPUs, within the node's GPUs."""
    config = load_config(REPO / "jobs" / "train_gpu.yaml")
    infer, train = config.infer, config.train
    assert infer.mode == "vllm" and infer.num_gpus_per_actor >= 1
    gpus = infer.num_actors * infer.num_gpus_per_actor * infer.tensor_parallel_size
    assert gpus <= train.num_workers, f"{gpus} GPUs for infer on a node of {train.num_workers}"
