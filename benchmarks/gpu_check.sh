#!/usr/bin/env bash
# The one command for a GPU machine (torch 2.11 and triton 3.6 preinstalled, no network):
# the CUDA tests, then the GPU benchmarks, results appended as CSV. About 4 minutes on an H100.
#
#   bash benchmarks/gpu_check.sh            # results in benchmarks/results/ (or $OUT if set)
#
# Uses the machine's python3 and packages as they are (opslib from this checkout via
# PYTHONPATH; nothing is installed).
set -uo pipefail
cd "$(dirname "$0")/.."
results="${OUT:-benchmarks/results}"
mkdir -p "$results"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
status=0

python3 -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())" || exit 1

echo "== CUDA tests: Triton kernels, ops on CUDA, op contract on CUDA =="
python3 -m pytest -q -p no:cacheprovider tests/test_triton.py tests/test_op_contract.py \
    tests/test_public_api.py tests/test_update_ops.py -k "cuda or triton or public" 2>&1 | tee "$results/gpu_tests.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# The ops whose eager path is fused are also timed compiled (the op table marks them).
fused=$(cd benchmarks && python3 -c "from bench_table import BENCH; print(' '.join(n for n, b in BENCH.items() if b.against_compiled))")
echo "== GPU benchmarks: every op eager; also compiled: $fused =="
python3 benchmarks/bench.py --no-compile --samples 11 --results "$results" || status=1
python3 benchmarks/bench.py --ops $fused --samples 11 --results "$results" || status=1
python3 benchmarks/report.py --results "$results" > /dev/null || status=1
echo "== GPU optimizer step: opslib.optim.Adam (Triton) against torch's foreach and fused =="
python3 benchmarks/optimizer_step.py --device cuda | tee "$results/optimizer_step_cuda.txt" || status=1
grep -h "" "$results/summary.md" | head -80
exit $status
