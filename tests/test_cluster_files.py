"""The cluster launch files and job presets agree with each other and with the config schema (no Ray, no GPU)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

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
