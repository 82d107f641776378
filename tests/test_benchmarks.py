"""Smoke test of the benchmark scripts (no timing is asserted: CI machines are noisy)."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bench_table import BENCH

from opslib.testing.opinfos import OP_TABLE

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.every_op
@pytest.mark.slow  # ~30 s: every op through bench.py --quick and report.py
def test_quick_benchmark_writes_csvs_and_the_report_draws_them(tmp_path):
    run = subprocess.run(
        [sys.executable, "benchmarks/bench.py", "--quick", "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with (tmp_path / "timings.csv").open() as f:
        rows = list(csv.DictReader(f))
    ops = {r["op"] for r in rows}
    variants = {f"{info.name}[{v}]" for info in OP_TABLE for v in BENCH[info.name].variants}
    assert ops == {info.name for info in OP_TABLE} | variants
    assert {r["phase"] for r in rows} == {"forward", "backward", "full"}
    assert {r["mode"] for r in rows} == {"eager", "compiled-aot_eager", "vs-compiled-aot_eager"}
    against = {r["op"] for r in rows if r["mode"] == "vs-compiled-aot_eager"}
    fused = [info for info in OP_TABLE if BENCH[info.name].against_compiled]
    labels = {info.name for info in fused} | {
        f"{i.name}[{v}]" for i in fused for v in BENCH[i.name].variants
    }
    assert against == labels, against
    for r in rows:
        assert r["commit"] and r["machine"] and r["torch"] and r["threads"] and r["device"]
        assert float(r["ours_us"]) > 0 and float(r["native_us"]) > 0
        assert abs(float(r["ratio"]) - float(r["ours_us"]) / float(r["native_us"])) < 0.01
    assert (tmp_path / "memory.csv").exists() and (tmp_path / "model.csv").exists()

    report = subprocess.run(
        [sys.executable, "benchmarks/report.py", "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "ratios_cpu.png").stat().st_size > 10_000
    assert "| learned_silu | full |" in (tmp_path / "summary.md").read_text()


@pytest.mark.every_op
def test_a_dtype_run_times_that_dtype_and_the_report_keeps_to_float32(tmp_path):
    # Two ops with a bfloat16 kernel whose benchmark calls the tests' own reference (not conv's
    # bench_reference: native's half-precision convolutions can crash, see tests/test_conv.py).
    ops = [
        i.name for i in OP_TABLE if torch.bfloat16 in i.dtypes and BENCH[i.name].reference is None
    ]
    ops = ops[:2]
    dtype_args = ["--dtype", "bfloat16", "--ops", *ops, "--results", str(tmp_path)]
    run = subprocess.run(
        [sys.executable, "benchmarks/bench.py", "--quick", "--no-compile", *dtype_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ("timings", "memory"):
        with (tmp_path / f"{name}.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert {r["dtype"] for r in rows} == {"bfloat16"}, name
        assert {r["op"].split("[")[0] for r in rows} == set(ops), name
    with (tmp_path / "model.csv").open() as f:
        assert not list(csv.DictReader(f))  # the training step is float32 only

    import report

    runs = [
        {"device": "cpu", "run_id": run_id, "dtype": dtype}
        for run_id, dtype in (("1", "float32"), ("2", "bfloat16"), ("0", "float32"))
    ]
    assert report.latest_runs(runs) == {"cpu": [runs[0]]}
    undated = [{"device": "cpu", "run_id": "3"}, {"device": "cpu", "run_id": "4", "dtype": ""}]
    assert report.latest_runs(undated[:1]) == {"cpu": undated[:1]}  # model.csv: no dtype
    assert report.latest_runs(undated) == {"cpu": undated[1:]}  # a row older than the column
    # each op's newest run: a run of a few ops (bench.py --ops) adds to the tables
    by_op = [
        {"device": "cpu", "run_id": run_id, "dtype": "float32", "op": op}
        for run_id, op in (("5", "a"), ("5", "b"), ("6", "b"))
    ]
    assert report.latest_runs(by_op) == {"cpu": [by_op[0], by_op[2]]}
