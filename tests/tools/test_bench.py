"""`python -m jax_symm.bench`: a tiny CPU sweep end to end, and its helpers."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

# Children import the jax_symm under test (the installed package in CI, not
# necessarily the source tree, which holds no compiled extension).
from jax_symm import _child_environment

pytest.importorskip("tqdm")
pytest.importorskip("tabulate")
pytest.importorskip("matplotlib")


def _bench(tmp_path, *extra, timeout=110):
    env = dict(os.environ, **_child_environment.changes(os.environ, platform="cpu"))
    cmd = [sys.executable, "-m", "jax_symm.bench", *extra, "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    from jax_symm.bench.report import COLUMNS
    assert rows and list(rows[0].keys()) == COLUMNS
    return proc, rows


def _check_rows(rows, world, processes, min_ok):
    """Every row checked; a figure is positive and inside its own [p10, p90], or absent
    because the case was below resolution; never a zero or negative time."""
    for r in rows:
        assert r["dtype"] == "float32" and int(r["world"]) == world, r
        assert int(r["processes"]) == processes, r
        assert int(r["devices_per_process"]) * processes == world, r
        assert r["check"] == "pass", r
        assert r["status"] in ("ok", "below_resolution"), r
        if r["status"] == "below_resolution":
            assert r["time_us"] == "nan" and "below resolution" in r["error"], r
            continue
        for col in ("time_us", "p10_us", "p90_us", "algbw_GBps", "busbw_GBps"):
            v = float(r[col])
            assert math.isfinite(v) and v > 0, (col, r)
        assert float(r["p10_us"]) <= float(r["time_us"]) <= float(r["p90_us"]), r
        factor = 2 if r["op"] == "all_reduce" else 1  # nccl-tests' bus factors
        busbw = float(r["algbw_GBps"]) * factor * (world - 1) / world
        assert math.isclose(float(r["busbw_GBps"]), busbw, rel_tol=1e-4), r
        assert r["device_us"] == "nan", r  # no device time on CPU
    # Cases resolve even on a busy 2-core machine; none resolving is a bug.
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= min_ok, [(r["op"], r["method"], r["error"]) for r in rows]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_tiny_cpu_sweep(tmp_path):
    proc, rows = _bench(tmp_path, "--min-bytes", "1KiB", "--max-bytes", "2KiB",
                        "--dtypes", "float32", "--k", "8", "--repeats", "5", "--warmup", "1")
    assert "jax 0." in proc.stdout and "all_gather" in proc.stdout
    for name in ("results.csv", "bench.png", "table.txt", "env.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every op (a kind each) x 1 dtype x 2 sizes x 4 methods (GPU-only methods
    # are left out on CPU): both forms, unrolled chains and a lax.scan loop.
    from jax_symm import _kinds

    n = len(_kinds.KINDS) * 2 * 4
    assert len(rows) == n
    assert {(r["op"], r["bytes_per_rank"], r["method"]) for r in rows} == {
        (op, b, m) for op in _kinds.KINDS
        for b in ("1024", "2048")
        for m in ("jax_symm", "lax", "jax_symm_scan", "lax_scan")}
    _check_rows(rows, world=8, processes=1, min_ok=len(rows) // 2)
    # The progress counts only the cases that run here, not the 7 methods a
    # GPU has; redirected (not a terminal), one line per (op, dtype), no
    # carriage returns.
    assert f"{n}/{n} cases done" in proc.stderr and "\r" not in proc.stderr, proc.stderr[-2000:]
    assert f"/{len(_kinds.KINDS) * 2 * 7}" not in proc.stderr
    env_facts = json.loads((tmp_path / "env.json").read_text())
    assert env_facts["host"]["jax"] and env_facts["workers"][0]["facts"]["world"] == 8


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_multiprocess_cpu_sweep(tmp_path):
    """--processes 2 x 2 devices through jax.distributed (run_multiprocess)."""
    proc, rows = _bench(tmp_path, "--processes", "2", "--devices-per-process", "2",
                        "--ops", "all_gather,all_reduce", "--min-bytes", "1KiB",
                        "--max-bytes", "1KiB", "--dtypes", "float32", "--k", "8",
                        "--repeats", "7")
    assert len(rows) == 8  # 2 ops x 4 methods (chains and scan loops)
    # Small jax_symm cases next to gloo's millisecond noise may not resolve.
    _check_rows(rows, world=4, processes=2, min_ok=1)
    env_facts = json.loads((tmp_path / "env.json").read_text())
    worker = env_facts["workers"][0]
    assert worker["facts"]["processes"] == 2 and worker["facts"]["process_index"] == 0
    assert len(worker["per_process_time_us"]) == 2
    assert "2 processes x 2 devices" in (tmp_path / "table.txt").read_text()


@pytest.mark.timeout(120)
def test_device_time_pass_without_device_events(tmp_path):
    """--device-time on where the profiler sees no device (CPU): the sweep still
    reports wall-clock figures; the device columns stay empty, with a note."""
    proc, rows = _bench(tmp_path, "--ops", "all_gather", "--min-bytes", "1KiB",
                        "--max-bytes", "1KiB", "--dtypes", "float32", "--k", "8",
                        "--repeats", "5", "--device-time", "on")
    assert len(rows) == 4  # jax_symm, lax, each as chains and as a scan loop
    _check_rows(rows, world=8, processes=1, min_ok=1)
    for r in rows:
        assert "device time: the profiler recorded no device events" in r["error"], r
    assert "device time: the profiler recorded no device events" in proc.stdout


def _resolved(argv, backend="cpu"):
    from jax_symm.bench import cli, worker
    return worker.resolve(cli._spec(cli.parse(argv), [], "default", None), backend)


def test_default_sweep_is_short_and_full_is_behind_a_flag():
    """No arguments: a sweep of about a minute on a loaded 2-core machine
    (per op 12 cases on CPU: float32 x 3 sizes x 4 methods); --full: every
    dtype and every power of two (88 cases per op), as before."""
    quick = _resolved([])
    assert quick["dtypes"] == ["float32"] and quick["repeats"] == 9
    assert quick["sizes"] == [4 << 10, 64 << 10, 1 << 20]
    assert len(quick["dtypes"]) * len(quick["sizes"]) * 4 == 12
    full = _resolved(["--full"])
    assert full["dtypes"] == ["bfloat16", "float32"] and full["repeats"] == 5
    assert full["sizes"] == [1 << p for p in range(10, 21)]
    assert len(full["dtypes"]) * len(full["sizes"]) * 4 == 88
    # Options still win over either default.
    picked = _resolved(["--dtypes", "bfloat16", "--min-bytes", "1KiB", "--size-step", "8",
                        "--repeats", "3"])
    assert picked["dtypes"] == ["bfloat16"] and picked["repeats"] == 3
    assert picked["sizes"] == [1 << 10, 1 << 13, 1 << 16, 1 << 19, 1 << 20]
    assert _resolved([], "gpu")["sizes"][-1] == 256 << 20  # GPU: up to 256 MiB
    from jax_symm.bench import cli
    with pytest.raises(SystemExit):
        cli.parse(["--dtypes", "float33"])
    with pytest.raises(SystemExit):
        cli.parse(["--size-step", "1"])


@pytest.mark.timeout(120)
def test_default_sizes_end_to_end(tmp_path):
    """The default sweep's sizes and dtype reach the workers and the table
    (one op and two methods of it, to keep the test short)."""
    proc, rows = _bench(tmp_path, "--ops", "all_gather", "--methods", "jax_symm,lax")
    assert sorted({int(r["bytes_per_rank"]) for r in rows}) == [4 << 10, 64 << 10, 1 << 20]
    _check_rows(rows, world=8, processes=1, min_ok=1)
    assert len(rows) == 6


def test_cli_rejects_inconsistent_process_options():
    from jax_symm.bench import cli
    with pytest.raises(SystemExit):
        cli.parse(["--devices-per-process", "2"])  # needs --processes > 1
    with pytest.raises(SystemExit):
        cli.parse(["--processes", "2", "--devices", "4"])
    args = cli.parse(["--processes", "2"])
    assert args.devices_per_process == 2


def test_help_names_every_op(capsys):
    from jax_symm import _kinds
    from jax_symm.bench import cli
    with pytest.raises(SystemExit):
        cli.parse(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    measures = out[out.index("Measures"):out.index("(--ops)")]
    for kind in _kinds.KINDS:
        assert kind.replace("_", "-") in measures, (kind, measures)


def test_bench_ops_are_exactly_the_kinds():
    from jax_symm import _kinds
    from jax_symm.bench import ops
    assert list(ops.OPS) == list(_kinds.KINDS)
    for name, op in ops.OPS.items():
        kind = _kinds.KINDS[name]
        assert op.name == name and op.kind is kind and op.exact == (not kind.sums)
        assert op.in_elems(3, 4) == 3 * kind.in_chunks(4)
    # nccl-tests' conventions, written out: algbw counts the larger side.
    kinds = ("all_gather", "reduce_scatter", "all_reduce", "all_to_all")
    assert [ops.OPS[k].algbw_bytes(10, 4) for k in kinds] == [40, 40, 10, 40]
    assert [ops.OPS[k].busbw_factor(4) for k in kinds] == [0.75, 0.75, 1.5, 0.75]


def test_a_kind_without_bench_facts_fails_at_import(monkeypatch):
    import dataclasses

    from jax_symm import _kinds
    from jax_symm.bench import ops
    extra = dataclasses.replace(_kinds.KINDS["all_gather"], name="broadcast")
    monkeypatch.setattr(_kinds, "KINDS", {**_kinds.KINDS, "broadcast": extra})
    with pytest.raises(ImportError, match=r"missing \['broadcast'\]"):
        ops._ops()


@pytest.mark.parametrize("name", ["all_gather", "reduce_scatter", "all_reduce", "all_to_all"])
def test_bench_op_calls_jax_symm_and_its_lax_twin(name):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jax_symm.bench import ops
    op, world, n = ops.OPS[name], 8, 6
    mesh = Mesh(np.array(jax.devices()[:world]), ("x",))
    x_global = np.random.default_rng().standard_normal(world * op.in_elems(n, world))
    x = jax.device_put(x_global.astype(np.float32), NamedSharding(mesh, P("x")))
    out = {}
    for impl, fn in (("jax_symm", op.symm), ("lax", op.lax)):
        f = jax.jit(jax.shard_map(lambda a, fn=fn: fn(a, "x"), mesh=mesh, in_specs=P("x"),
                                  out_specs=P("x")))
        assert (f"jax_symm_host_{name}" in f.lower(x).as_text()) == (impl == "jax_symm")
        out[impl] = np.asarray(f(x))
    expected = op.reference(x_global.astype(np.float32).astype(np.float64), world)
    np.testing.assert_allclose(out["lax"], expected, rtol=1e-5, atol=1e-5 * world)
    np.testing.assert_allclose(out["jax_symm"], out["lax"], rtol=1e-5, atol=1e-5 * world)


def test_units_and_methods():
    from jax_symm.bench import methods, units
    assert units.parse_bytes("1KiB") == 1024 and units.parse_bytes("256MiB") == 256 << 20
    assert units.parse_bytes("4096") == 4096 and units.format_bytes(1 << 20) == "1MiB"
    assert units.sizes(1024, 8192) == [1024, 2048, 4096, 8192]
    assert units.sizes(4096, 1 << 20, 16) == [4096, 64 << 10, 1 << 20]
    assert units.sizes(1024, 1 << 20, 16) == [1024, 16 << 10, 256 << 10, 1 << 20]  # ends at max
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


# ---------------------------------------------------------------- estimator

def _old_formula(ks, t):
    """The estimator this replaced: (t(K) - t(1)) / (K - 1) per repeat."""
    t = np.asarray(t)
    return (t[:, -1] - t[:, 0]) / (ks[-1] - 1)


def test_estimator_exact_line():
    from jax_symm.bench.timing import estimate
    ks = [1, 5, 10]
    t = [[(50 + 2 * k) * 1e-6 for k in ks] for _ in range(5)]  # 50 us + 2 us per op
    e = estimate(ks, t)
    assert e.resolved and e.time_us == pytest.approx(2.0)
    assert e.p10_us == pytest.approx(2.0) and e.p90_us == pytest.approx(2.0)


def test_estimator_never_negative_where_the_old_one_was():
    from jax_symm.bench.timing import estimate
    ks = [1, 5, 10]
    rng = np.random.default_rng(1)
    true_slope = 3.0
    t = np.array([[60 + true_slope * k for k in ks] for _ in range(9)], dtype=float)
    t += rng.normal(0, 1.0, t.shape)
    t[0, 0] += 80   # a run slowed by another process: t(1) of repeat 0
    t[3, 0] += 60
    t *= 1e-6
    old = _old_formula(ks, t) * 1e6
    assert np.percentile(old, 10) < 0  # the old p10 was negative here
    e = estimate(ks, t)
    assert e.resolved and e.p10_us > 0
    assert e.time_us == pytest.approx(true_slope, rel=0.3)
    assert e.p10_us <= e.time_us <= e.p90_us


def test_estimator_below_resolution_gives_no_figure():
    from jax_symm.bench.timing import estimate
    ks = [1, 5, 10]
    rng = np.random.default_rng(2)
    t = (100 + rng.normal(0, 5.0, (7, 3))) * 1e-6  # no cost per op, only noise
    e = estimate(ks, t)
    assert not e.resolved
    assert math.isnan(e.time_us) and math.isnan(e.p10_us) and math.isnan(e.p90_us)
    assert "below resolution" in e.note
    # A slope that is negative for sure is never reported either.
    t2 = np.array([[100 - 3 * k for k in ks]] * 4) * 1e-6
    e2 = estimate(ks, t2)
    assert not e2.resolved and e2.slope_us == pytest.approx(-3.0)


def test_estimator_single_k_and_shapes():
    from jax_symm.bench.timing import chain_lengths, estimate, time_chains
    assert chain_lengths(1) == [1] and chain_lengths(2) == [1, 2]
    assert chain_lengths(10) == [1, 5, 10] and chain_lengths(3) == [1, 3]
    e = estimate([1], [[10e-6], [12e-6], [11e-6]])
    assert e.resolved and e.time_us == pytest.approx(11.0) and "t(1)" in e.note
    with pytest.raises(ValueError):
        estimate([1, 5], [[1e-6, 2e-6, 3e-6]])

    # time_chains rotates the order of chain lengths between repeats.
    seen = []

    class F:
        def __init__(self, k):
            self.k = k

        def __call__(self, x):
            seen.append(self.k)
            return self

        def block_until_ready(self):
            return self

    fns = {k: F(k) for k in (1, 5, 10)}
    ks, sec = time_chains(fns, None, repeats=3, warmup=0,
                          clock=lambda f, x: (f(x), f.k * 1e-6)[1])
    assert ks == [1, 5, 10] and sec.shape == (3, 3)
    assert np.allclose(sec * 1e6, [[1, 5, 10]] * 3)
    timed = seen[3:]  # after one warm-up round
    assert timed[:3] == [1, 5, 10] and timed[3:6] == [5, 10, 1]


def test_methods_are_timed_side_by_side():
    """Every repeat runs every method's chains, the methods' order rotating,
    so that a slow spell of the machine slows them alike (the ratios between
    them come from the same moments)."""
    from jax_symm.bench.timing import time_side_by_side
    seen = []

    class F:
        def __init__(self, label, k):
            self.label, self.k = label, k

        def __call__(self, x):
            seen.append((self.label, self.k))
            return self

        def block_until_ready(self):
            return self

    scale = {"a": 1.0, "b": 2.0, "c": 3.0}
    methods = {m: {k: F(m, k) for k in (1, 4)} for m in scale}
    ks, sec = time_side_by_side(methods, None, repeats=3, warmup=0,
                                clock=lambda f, x: (f(x), scale[f.label] * f.k * 1e-6)[1])
    assert ks == [1, 4] and set(sec) == set(scale)
    for m, v in scale.items():
        assert sec[m].shape == (3, 2) and np.allclose(sec[m] * 1e6, [[v, 4 * v]] * 3)
    timed = seen[6:]  # after one warm-up round of 3 methods x 2 lengths
    firsts = [timed[i][0] for i in range(0, 18, 6)]
    assert firsts == ["a", "b", "c"]  # a different method leads each repeat
    for r in range(3):  # each repeat holds every method's every chain once
        assert sorted(timed[6 * r:6 * r + 6]) == sorted((m, k) for m in scale for k in (1, 4))
    with pytest.raises(ValueError, match="chain lengths"):
        time_side_by_side({"a": {1: F("a", 1)}, "b": {2: F("b", 2)}}, None, 1, 0)


# ---------------------------------------------------------------- device time

def test_device_spans_assigns_events_to_runs():
    from jax_symm.bench import devtime
    windows = [(devtime.run_name(0, 1), 0, 100), (devtime.run_name(0, 5), 200, 400),
               ("unrelated", 0, 1000)]
    events = [(10, 20), (30, 50),            # run (0, 1): span 40
              (210, 260), (300, 390),        # run (0, 5): span 180
              (150, 160)]                    # between runs: nobody's
    spans = devtime.device_spans(windows, events)
    assert spans[devtime.run_name(0, 1)] == 40
    assert spans[devtime.run_name(0, 5)] == 180
    m = devtime.spans_matrix(spans, repeats=1, ks=[1, 5])
    assert np.allclose(m, [[40e-9, 180e-9]])
    assert devtime.spans_matrix(spans, repeats=2, ks=[1, 5]) is None  # repeat 1 missing
    assert devtime.device_spans(windows, []) == {}


@pytest.mark.timeout(60)
def test_device_time_is_optional_on_cpu():
    """No device events on CPU: no figure, a note, no exception."""
    import jax
    import jax.numpy as jnp
    from jax_symm.bench import devtime
    f = jax.jit(lambda x: x * 2)
    mat, note = devtime.measure({1: f, 2: f}, jnp.ones(8), repeats=1)
    assert mat is None and note.startswith("device time:")


# ---------------------------------------------------------------- methods, report

def test_window_method_forces_the_window_path_in_its_own_worker():
    from jax_symm import settings
    from jax_symm.bench import methods
    m = methods.METHODS["jax_symm_window"]
    assert m.gpu_only  # the size crossover only exists on GPU
    (name, value), = m.env
    assert name == settings.FORCE_WINDOW_ENV == "JAX_SYMM_FORCE_WINDOW" and value == "1"
    assert settings.force_window.value is False  # the environment variable names the option
    groups = methods.groups([methods.METHODS["jax_symm"], methods.METHODS["lax"], m])
    assert [x.label for x in groups[0]] == ["jax_symm", "lax"]
    assert [x.label for x in groups[1]] == ["jax_symm_window"]  # its own worker (env)


def test_path_methods_choose_the_nccl_path_in_their_own_workers():
    from jax_symm import settings
    from jax_symm.bench import methods
    xla, own = methods.METHODS["jax_symm_xla"], methods.METHODS["jax_symm_own"]
    assert xla.gpu_only and own.gpu_only
    assert dict(xla.env) == {settings.FORCE_WINDOW_ENV: "1", settings.NCCL_PATH_ENV: "xla"}
    assert dict(own.env) == {settings.FORCE_WINDOW_ENV: "1", settings.NCCL_PATH_ENV: "own"}
    # The XLA path's buffers live in XLA's collective memory, which must be sized.
    assert xla.collective_mem and not own.collective_mem
    groups = methods.groups([methods.METHODS["lax"], xla, own])
    assert [[m.label for m in g] for g in groups] == [["lax"], ["jax_symm_xla"], ["jax_symm_own"]]


def test_plot_title_names_cpu_once_and_clears_the_subplots(tmp_path):
    from jax_symm.bench import cli, report
    facts = {"backend": "cpu", "device_kind": "cpu", "world": 8, "jax": "0.10.2",
             "processes": 1}
    title = cli._title(facts, {"cpus": 2, "date": "2026-11-25T08:00:00"})
    assert title.lower().count("cpu") == 1, title
    recs = [dict(op="all_gather", dtype="float32", bytes_per_rank=b, method=m, status="ok",
                 time_us=t, busbw_GBps=1.0, device_us=math.nan)
            for b in (1024, 2048) for m, t in (("jax_symm", 5.0), ("lax", 9.0))]
    fig = report.figure(recs, title=title)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    sup = fig._suptitle.get_window_extent(renderer)
    first = fig.axes[0].title.get_window_extent(renderer)
    assert sup.y0 >= first.y1, (sup, first)  # above, not overlapping


def test_raw_timer_takes_names_and_checks_them():
    from jax_symm import diagnostics
    from jax_symm._native import ext
    with pytest.raises(RuntimeError, match="unknown op 'broadcast' \\(all_gather, "
                                           "reduce_scatter, all_reduce, all_to_all\\)"):
        ext.nccl_time_raw([0], "broadcast", 1024, "float32", 1, 1)
    with pytest.raises(RuntimeError, match="no NCCL type for dtype 'complex64'"):
        ext.nccl_time_raw([0], "all_gather", 1024, "complex64", 1, 1)
    with pytest.raises(RuntimeError, match="whole number of bfloat16"):
        ext.nccl_time_raw([0], "all_reduce", 1023, "bfloat16", 1, 1)
    with pytest.raises(ValueError):
        diagnostics.nccl_raw_time([], "broadcast", 1024, "float32")
    import jax
    if jax.default_backend() != "gpu":
        ok, why = diagnostics.nccl_available()
        assert not ok and "no GPU" in why
        with pytest.raises(RuntimeError, match="no GPU"):
            diagnostics.nccl_raw_time(jax.devices(), "all_gather", 1024, "float32")


def test_progress_in_a_redirected_log_is_line_per_panel(capsys):
    from jax_symm.bench.worker import Progress
    p = Progress(4, "default", enabled=True)
    for panel in ("a", "a", "b", "b"):
        p.step(f"case {panel}", panel)
        p.advance()
    p.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("[default] 4/4 cases done"), lines


# ---------------------------------------------------------------- GPU only

def _gpu():
    import jax
    return jax.default_backend() == "gpu"


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu(), reason="needs a GPU")
@pytest.mark.timeout(120)
def test_gpu_device_time_and_raw_nccl():
    """On a GPU: the profiler yields device spans for every run, growing with K,
    and the raw NCCL timer returns one positive figure per repeat."""
    import jax
    import jax.numpy as jnp
    from jax_symm import diagnostics
    from jax_symm.bench import devtime
    from jax_symm.bench.timing import estimate

    def chain(k):
        def f(x):
            for _ in range(k):
                x = jnp.sin(x) * 1.0001
            return x
        return jax.jit(f)

    fns = {1: chain(1), 20: chain(20), 40: chain(40)}
    mat, note = devtime.measure(fns, jnp.ones(1 << 20), repeats=3)
    assert mat is not None, note
    assert (mat > 0).all() and (mat[:, -1] > mat[:, 0]).all(), mat
    assert estimate([1, 20, 40], mat).resolved
    for op in ("all_gather", "reduce_scatter", "all_reduce"):
        us = diagnostics.nccl_raw_time(jax.devices(), op, 1 << 16, "bfloat16", iters=5,
                                       repeats=3)
        assert len(us) == 3 and all(u > 0 for u in us), (op, us)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sub,needs", [("overhead", "needs a GPU"),
                                       ("nccl-log", "needs NVIDIA GPUs")])
def test_gpu_subcommands_on_cpu_say_what_they_need(tmp_path, sub, needs):
    env = dict(os.environ, **_child_environment.changes(os.environ, platform="cpu"))
    proc = subprocess.run([sys.executable, "-m", "jax_symm.bench", sub], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert needs in proc.stderr and "backend is 'cpu'" in proc.stderr, proc.stderr[-3000:]
