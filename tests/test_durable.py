"""Outputs are replaced whole or not at all, and one writer holds a run dir: real files, real kills, a real
kernel limit on file size standing in for a full disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sefl_ray.data.records import RECORD_SCHEMA
from sefl_ray.durable import replacing_folder, write_parquet, write_text
from sefl_ray.run_lock import RunDirBusyError, run_lock

# Runs CODE in a child whose files may not grow past LIMIT bytes (RLIMIT_FSIZE): the kernel fails the write
# half-way, as a full disk would.
FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
{code}
"""


def run_on_a_full_disk(code: str, limit: int = 64 * 1024) -> subprocess.CompletedProcess:
    script = FULL_DISK.format(limit=limit, code=textwrap.dedent(code))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def test_a_write_that_fails_half_way_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "summary.json"
    write_text(target, '{"old": true}\n')
    result = run_on_a_full_disk(f"""
        from sefl_ray.durable import write_text
        try:
            write_text({str(target)!r}, "x" * 1_000_000)
        except OSError as exc:
            print("failed", exc.errno)
    """)
    assert result.stdout.startswith("failed"), result.stderr
    assert target.read_text() == '{"old": true}\n' and leftovers(tmp_path) == []

    table = pa.table({"id": list(range(10))})
    write_parquet(tmp_path / "rows.parquet", table)
    result = run_on_a_full_disk(f"""
        import os
        import pyarrow as pa
        from sefl_ray.durable import write_parquet
        try:  # random text: parquet cannot compress it under the limit
            write_parquet({str(tmp_path / "rows.parquet")!r}, pa.table({{"text": [os.urandom(500).hex() for _ in range(1000)]}}))
        except OSError as exc:
            print("failed")
    """)
    assert result.stdout.startswith("failed"), result.stderr
    assert pq.read_table(tmp_path / "rows.parquet").equals(table) and leftovers(tmp_path) == []


def test_a_folder_is_swapped_in_only_when_its_block_finishes(tmp_path):
    target = tmp_path / "export"
    with replacing_folder(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with replacing_folder(target) as staging:
            (staging / "a.txt").write_text("second, half done")
            raise RuntimeError("the check failed")
    assert (target / "a.txt").read_text() == "first" and leftovers(tmp_path) == []
    with replacing_folder(target) as staging:
        (staging / "b.txt").write_text("third")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and leftovers(tmp_path) == []


HOLD_THE_LOCK = """
import sys, time
from sefl_ray.run_lock import run_lock
with run_lock(sys.argv[1], "pipeline"):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_one_writer_per_run_dir_and_a_killed_holder_frees_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunDirBusyError, match=f"in use by pid {holder.pid} .*sefl-ray pipeline"):
            with run_lock(tmp_path, "synth"):
                pass
        # the CLI says the same in one line, and touches nothing in the run dir
        (tmp_path / "synth").mkdir()
        before = sorted(p.name for p in tmp_path.rglob("*"))
        result = subprocess.run([sys.executable, "-m", "sefl_ray.cli", "export", "jobs/local.yaml", "--set",
                                 f"run_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(
            f"sefl-ray export: error: {tmp_path} is in use by pid {holder.pid}")
        assert sorted(p.name for p in tmp_path.rglob("*")) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel dropped the dead holder's lock: the next writer takes it at once and records itself
    started = time.monotonic()
    with run_lock(tmp_path, "synth"):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert time.monotonic() - started < 1


def test_an_export_that_runs_out_of_disk_keeps_the_previous_export(tmp_path):
    from sefl_ray.export.dataset import ExportConfig, export_dataset, read_exportable_records
    from tests.test_export import make_record

    records_dir = tmp_path / "records"
    write_parquet(records_dir / "part-0.parquet", pa.Table.from_pylist(
        [make_record(i) for i in range(40)], schema=RECORD_SCHEMA))
    out_dir = tmp_path / "export"
    export_dataset(read_exportable_records(records_dir), out_dir, ExportConfig(), seed=0)
    before = {p.relative_to(out_dir): p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
    # the same export again, with more rows, on a "disk" that fills up half-way through the arrow files
    write_parquet(records_dir / "part-1.parquet", pa.Table.from_pylist(
        [make_record(i) for i in range(40, 400)], schema=RECORD_SCHEMA))
    result = run_on_a_full_disk(f"""
        from sefl_ray.export.dataset import ExportConfig, export_dataset, read_exportable_records
        try:
            export_dataset(read_exportable_records({str(records_dir)!r}), {str(out_dir)!r}, ExportConfig(), seed=0)
        except OSError as exc:
            print("failed", exc)
    """, limit=200 * 1024)
    assert result.stdout.startswith("failed"), result.stdout + result.stderr[-2000:]
    after = {p.relative_to(out_dir): p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
    assert after == before and leftovers(tmp_path) == []
