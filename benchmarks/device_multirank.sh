#!/usr/bin/env bash
# One device-machine call for the multi-rank GPU work: build, the 1-rank GPU
# tests, NCCL's own log of a 2-process job on one GPU, then the multi-rank
# suite (tests/gpu/test_gpu_multirank.py) for the parts named in $PARTS
# (w2, w4, faults, overhead). Logs go to $OUT (device tool) or ./device_out.
set -uo pipefail
OUT=${OUT:-device_out}; mkdir -p "$OUT"
PARTS=${PARTS:-"build gpu1 log w2"}
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
R=$PWD
py() { python3 "$@"; }
run_tests() {  # name timeout pytest-args...
  local name=$1 limit=$2; shift 2
  (cd /tmp && timeout "$limit" python3 -m pytest -q -rA --rootdir "$R" -p no:cacheprovider "$@") \
    > "$OUT/$name.log" 2>&1
  echo "== $name rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed|^world|^jax_symm, kill|^lax, kill" "$OUT/$name.log" | head -40
}
for part in $PARTS; do case $part in
  build)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    py -m pip install -q --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1
    echo "== build rc=$?"; grep -iE "error|warning:" "$OUT/build.log" | head -20 ;;
  gpu1)
    run_tests gpu1 240 "$R/tests/gpu/test_gpu.py" "$R/tests/lowering/test_native_contract.py" ;;
  log)
    (cd /tmp && NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET,REG timeout 120 python3 -c "
import sys; sys.path.insert(0, '$R/tests')
import gpu_mp_workers as gw
from jax_symm.testing import run_multiprocess
out = run_multiprocess(gw.probe, num_processes=2, platform='gpu', share_gpus=True, timeout_s=100,
                       env={'NCCL_DEBUG': 'INFO', 'NCCL_DEBUG_SUBSYS': 'INIT,NET,REG'})
for i, log in enumerate(out.logs):
    print(f'===== process {i}'); print(log)
print('INFO', out[0])
") > "$OUT/nccl_log.txt" 2>&1
    echo "== nccl log rc=$?"
    grep -E "NCCL version|nRanks|Using network|via NET|[Rr]egist|[Ww]indow|comm 0x.*rank|INFO \{|Error|error" "$OUT/nccl_log.txt" | cut -c1-220 | head -30 ;;
  w2) run_tests w2 500 "$R/tests/gpu/test_gpu_multirank.py" -k w2 ;;
  w4) run_tests w4 500 "$R/tests/gpu/test_gpu_multirank.py" -k w4 ;;
  faults) run_tests faults 400 "$R/tests/gpu/test_gpu_multirank.py" -k "${FAULTS_K:-killed or stalled}" -s ;;
  overhead)  # the progress beacon's cost per captured call: with it, and without
    for t in 0 300; do echo "== overhead JAX_SYMM_GPU_TIMEOUT_S=$t"
      (cd /tmp && JAX_SYMM_GPU_TIMEOUT_S=$t timeout 200 jax-symm-bench overhead) 2>&1 | tail -7
    done ;;
esac; done
