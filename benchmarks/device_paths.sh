#!/usr/bin/env bash
# One device-machine call for the NCCL transport's two paths (README, "The
# NCCL paths"), after the staged wheels have arrived (../shared/gpu-staging):
#   setup  install the staged jax 0.12.1 + CUDA 13 plugin + NCCL 2.32.3 into
#          /tmp/site_extra, NCCL 2.32.3 moved aside into /tmp/nccl_new; build
#          jax_symm once, against the floor's FFI headers (.floor_ffi, carried:
#          jaxlib 0.10.1's xla/ffi/api), into /tmp/js
#   probe  one XLA-path call of each kind with NCCL's registration and tuning log
#   time   per-call times at world 1, lax and both paths side by side (probe_paths.py --time),
#          with the XLA path's handlers uncaptured and captured into CUDA graphs
#   trace  memcpy and NCCL kernels per jax_symm call in a profiler trace of a
#          captured chain (trace_copies.py), per path and NCCL (jax 0.12.1 with a
#          staged CUPTI >= 13.4 where one came: nvidia-cuda-cupti==13.4.92)
#   bench  jax-symm-bench at world 1: lax, lax_symm, jax_symm_xla, jax_symm_own
#          (BENCH_NCCL=new|img, BENCH_REPEATS)
#   gpu1-<jax>-<path>-<nccl>, w2-..., w4-...: the 1-rank GPU tests or the
#          multi-rank suite (2 or 4 processes sharing the GPU), jax "img"
#          (the image's 0.11.2) or "new" (0.12.1), path xla or own, NCCL "img"
#          (2.28.9) or "new" (2.32.3); faults-<jax>-<path>-<nccl>: the killed- and
#          stalled-peer tests; a2a-<jax>-<path>-<nccl>: the all-to-all's GPU
#          tests (1 rank, 2 and 4 ranks) with grouped ncclSend/ncclRecv serving
#          it (JAX_SYMM_NCCL_ALL_TO_ALL=send_recv), ncclAlltoAll's fallback
# Logs go to $OUT (device tool) or ./device_out.
set -uo pipefail
OUT=${OUT:-device_out}; mkdir -p "$OUT"
PARTS=${PARTS:-"setup probe"}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
R=$PWD
env_for() {  # jax path nccl -> PYTHONPATH and JAX_SYMM_NCCL_PATH for a run
  local pp=/tmp/js
  [ "$3" = new ] && pp=$pp:/tmp/nccl_new
  [ "$1" = new ] && pp=$pp:/tmp/site_extra
  echo "PYTHONPATH=$pp JAX_SYMM_NCCL_PATH=$2"
}
run_tests() {  # name timeout jax path nccl pytest-args...
  local name=$1 limit=$2 jax=$3 path=$4 nccl=$5; shift 5
  (cd /tmp && env $(env_for "$jax" "$path" "$nccl") ${EXTRA_ENV:-} timeout "$limit" python3 -m pytest -q -rfE \
     --rootdir "$R" -p no:cacheprovider "$@") > "$OUT/$name.log" 2>&1
  echo "== $name rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed|^path" "$OUT/$name.log" | head -12
}
for part in $PARTS; do case $part in
  setup)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    bash .stage/tools/install.sh 2>&1 | tail -5
    rm -rf /tmp/nccl_new /tmp/cupti_new && mkdir -p /tmp/nccl_new/nvidia \
      && mv /tmp/site_extra/nvidia/nccl /tmp/nccl_new/nvidia/ && mv /tmp/site_extra/nvidia_nccl* /tmp/nccl_new/
    if [ -d /tmp/site_extra/nvidia/cu13 ]; then
      # A staged CUPTI (jax 0.12.1's profiler needs >= its build's 13.4): the
      # plugin loads every CUDA library from the first nvidia/cu13 on the path,
      # so /tmp/cupti_new holds links to the image's, the new CUPTI's in place.
      img=$(cd /tmp && python3 -c "import nvidia.cu13 as m; print(m.__path__[0])")
      mkdir -p /tmp/cupti_new/nvidia/cu13/lib
      ln -s "$img"/lib/* /tmp/cupti_new/nvidia/cu13/lib/
      mkdir -p /tmp/cupti_keep && rm -rf /tmp/cupti_keep/nvidia && mv /tmp/site_extra/nvidia /tmp/cupti_keep/
      ln -sf /tmp/cupti_keep/nvidia/cu13/lib/* /tmp/cupti_new/nvidia/cu13/lib/
      echo "staged CUPTI in /tmp/cupti_new (image's CUDA libraries from $img)"
    fi
    python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/js --upgrade \
      --config-settings=cmake.define.JAX_SYMM_FFI_INCLUDE_DIR="$R/.floor_ffi" . > "$OUT/build.log" 2>&1
    echo "== build rc=$?"; grep -iE "error|warning:" "$OUT/build.log" | head -20
    for c in "img own img" "new xla img" "new xla new"; do
      (cd /tmp && env $(env_for $c) python3 -c "
import jax, jax_symm, json; from jax_symm import _nccl, _nccl_path
print('$c', 'jax', jax.__version__, 'build', jax_symm._native.ext.build_info(),
      'nccl', _nccl.version_string(_nccl.load()['version']), 'path', _nccl_path.choice())" 2>&1 | tail -1)
    done ;;
  probe)
    (cd /tmp && env $(env_for new xla img) NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,REG,TUNING \
      JAX_SYMM_SINGLETON_CALLS=1 timeout 120 python3 "$R/benchmarks/probe_paths.py") \
      > "$OUT/probe.log" 2>&1
    echo "== probe rc=$?"; grep -E "^(PROBE|Traceback)|Error|error|Symmetric|[Rr]egist" "$OUT/probe.log" | cut -c1-240 | head -30 ;;
  time)
    for cap in ${TIME_CAPTURE:-0 1}; do
      (cd /tmp && env $(env_for new xla "${TIME_NCCL:-img}") JAX_SYMM_NCCL_XLA_CAPTURE=$cap JAX_SYMM_SINGLETON_CALLS=1 JAX_SYMM_FORCE_WINDOW=1 \
        timeout 240 python3 "$R/benchmarks/probe_paths.py" --time) > "$OUT/time_cap$cap-${TIME_NCCL:-img}.log" 2>&1
      echo "== time capture=$cap rc=$?"; grep -E "^TIME|Error" "$OUT/time_cap$cap-${TIME_NCCL:-img}.log" | head -12
    done ;;
  trace)
    for c in "new xla new" "new xla img" "img own img"; do
      cupti=""; [ "${c%% *}" = new ] && [ -d /tmp/cupti_new ] && cupti=/tmp/cupti_new:
      (cd /tmp && env $(env_for $c | sed "s|PYTHONPATH=|PYTHONPATH=$cupti|") JAX_SYMM_SINGLETON_CALLS=1 timeout 200 \
        python3 "$R/benchmarks/trace_copies.py") > "$OUT/trace-${c// /-}.log" 2>&1
      echo "== trace $c rc=$?"; grep -E "^TRACE|Error" "$OUT/trace-${c// /-}.log" | cut -c1-600 | head -8
    done ;;
  bench)
    # jax-symm-bench at world 1 (singleton calls kept): lax, lax with XLA's
    # symmetric buffers, and jax_symm's two NCCL paths, side by side
    (cd /tmp && env $(env_for new xla "${BENCH_NCCL:-new}") JAX_SYMM_SINGLETON_CALLS=1 timeout 480 \
      python3 -m jax_symm.bench --platform gpu --devices 1 --dtypes float32 --size-step 2 \
        --min-bytes 4KiB --max-bytes 64MiB --repeats ${BENCH_REPEATS:-9} --no-progress \
        --methods lax,lax_symm,jax_symm_xla,jax_symm_own --out "$OUT/bench-${BENCH_NCCL:-new}") \
      > "$OUT/bench-${BENCH_NCCL:-new}.log" 2>&1
    echo "== bench rc=$?"; tail -45 "$OUT/bench-${BENCH_NCCL:-new}.log" ;;
  gpu1-*)
    IFS=- read -r _ jax path nccl <<< "$part"
    run_tests "$part" 240 "$jax" "$path" "$nccl" "$R/tests/gpu/test_gpu.py" "$R/tests/lowering/test_native_contract.py" -s ;;
  a2a-*)
    IFS=- read -r _ jax path nccl <<< "$part"
    EXTRA_ENV=JAX_SYMM_NCCL_ALL_TO_ALL=send_recv run_tests "$part-1" 240 "$jax" "$path" "$nccl" \
      "$R/tests/gpu/test_gpu.py" -k "all_to_all or loaded_nccls_rules"
    EXTRA_ENV=JAX_SYMM_NCCL_ALL_TO_ALL=send_recv run_tests "$part-w" 400 "$jax" "$path" "$nccl" \
      "$R/tests/gpu/test_gpu_multirank.py" -k "all_to_all or suite_report" -s ;;
  faults-*)
    IFS=- read -r _ jax path nccl <<< "$part"
    run_tests "$part" 420 "$jax" "$path" "$nccl" "$R/tests/gpu/test_gpu_multirank.py" -k "killed or stalled" -s ;;
  w2-*|w4-*)
    IFS=- read -r w jax path nccl <<< "$part"
    run_tests "$part" 500 "$jax" "$path" "$nccl" "$R/tests/gpu/test_gpu_multirank.py" -k "$w and not killed and not stalled" -s ;;
esac; done
