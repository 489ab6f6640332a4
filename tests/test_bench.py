"""`python -m jax_symm.bench`: a tiny CPU sweep end to end, and its helpers."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest

import jax_symm

# Where the jax_symm under test was imported from (the installed package in
# CI, not necessarily the source tree, which holds no compiled extension).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(jax_symm.__file__)))

pytest.importorskip("tqdm")
pytest.importorskip("tabulate")
pytest.importorskip("matplotlib")


@pytest.mark.timeout(120)
def test_tiny_cpu_sweep(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "jax_symm.bench", "--min-bytes", "1KiB", "--max-bytes", "2KiB",
           "--dtypes", "float32", "--k", "8", "--repeats", "5", "--warmup", "1",
           "--no-progress", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "jax 0." in proc.stdout and "all_gather" in proc.stdout

    for name in ("results.csv", "bench.png", "table.txt", "env.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    from jax_symm.bench.report import COLUMNS
    assert list(rows[0].keys()) == COLUMNS
    # 3 ops x 1 dtype x 2 sizes x 2 methods (GPU-only methods are left out on CPU).
    assert len(rows) == 12
    assert {(r["op"], r["bytes_per_rank"], r["method"]) for r in rows} == {
        (op, b, m) for op in ("all_gather", "reduce_scatter", "all_reduce")
        for b in ("1024", "2048")
        for m in ("jax_symm", "lax")}
    for r in rows:
        assert r["dtype"] == "float32" and r["world"] == "8", r
        assert r["status"] == "ok" and r["check"] == "pass", r
        for col in ("time_us", "p10_us", "p90_us", "algbw_GBps", "busbw_GBps", "speedup_vs_lax"):
            v = float(r[col])
            assert math.isfinite(v) and v > 0, (col, r)
        assert float(r["p10_us"]) <= float(r["time_us"]) <= float(r["p90_us"]), r
        world = int(r["world"])
        factor = 2 if r["op"] == "all_reduce" else 1  # nccl-tests' bus factors
        busbw = float(r["algbw_GBps"]) * factor * (world - 1) / world
        assert math.isclose(float(r["busbw_GBps"]), busbw, rel_tol=1e-4), r

    env_facts = json.loads((tmp_path / "env.json").read_text())
    assert env_facts["host"]["jax"] and env_facts["workers"][0]["facts"]["world"] == 8


def test_units_and_methods():
    from jax_symm.bench import methods, units
    assert units.parse_bytes("1KiB") == 1024 and units.parse_bytes("256MiB") == 256 << 20
    assert units.parse_bytes("4096") == 4096 and units.format_bytes(1 << 20) == "1MiB"
    assert units.sizes(1024, 8192) == [1024, 2048, 4096, 8192]
    with pytest.raises(ValueError):
        units.parse_bytes("lots")
    chosen = methods.select(["jax_symm", "lax", "lax_symm", "nccl_raw"], cmdbuf_variants=True)
    labels = [m.label for m in chosen]
    assert "jax_symm[nocmdbuf]" in labels and "nccl_raw[nocmdbuf]" not in labels
    groups = methods.groups(chosen)
    assert [m.label for m in groups[0]] == ["jax_symm", "lax", "nccl_raw"]
    assert all(m.xla_flags for g in groups[1:] for m in g)


def test_missing_dependency_names_the_extra():
    from jax_symm.bench import deps
    with pytest.raises(ImportError, match=r"jax_symm\[bench\]"):
        deps.require("surely_not_a_module_jax_symm_bench")
