#!/usr/bin/env bash
# The GPU checks of issue 29 as one prepared run on a lent CUDA machine (docs/benchmarks.md, "On a lent GPU"):
# the card, the CUDA tests, NAFlow's speed (MobileNetV2 and ResNet-50, 1 and 8 photos) and Score-CAM /
# Ablation-CAM against pytorch-grad-cam and their floor at 224 px. Each step has its own time cap and
# a failed step does not stop the others; everything goes to $OUT/gpu-checks.log (default gpu-out/).
# Prepare with scripts/gpu_pack.sh here, then run with .gpu carried:
#     bash scripts/gpu_checks.sh            # on the device machine (python3 holds CUDA PyTorch there)
#     bash scripts/gpu_checks.sh --smoke    # here, first: the same steps on the CPU at the smallest settings
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=0
case "${1:-}" in
    "") ;;
    --smoke) smoke=1 ;;
    *) echo "usage: bash scripts/gpu_checks.sh [--smoke]" >&2; exit 2 ;;
esac
if [ "$smoke" = 0 ] && [ ! -d .gpu ]; then
    echo "error: .gpu/ is missing: run 'bash scripts/gpu_pack.sh' here and name .gpu in carry" >&2
    exit 2
fi
out=${OUT:-gpu-out}
mkdir -p "$out"
log="$out/gpu-checks.log"
: >"$log"
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1 VISIONLENS_OFFLINE=1
if [ "$smoke" = 1 ]; then
    py=${PYTHON:-.venv/bin/python}
else
    py=${PYTHON:-python3}
    # Installed beside, not into, the machine's Python: the wheels need nothing it lacks.
    "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/visionlens-site .gpu/wheels/*.whl || exit 2
    export PYTHONPATH="$PWD/src:$PWD/systems/refer/src:/tmp/visionlens-site${PYTHONPATH:+:$PYTHONPATH}"
    export VISIONLENS_HOME="$PWD/.gpu/home"
fi
failed=0

step() {  # step SECONDS TITLE COMMAND...: run under a time cap, log it, remember a failure
    local cap=$1 title=$2
    shift 2
    echo "=== $title (cap ${cap}s): $*" | tee -a "$log"
    local start=$SECONDS
    timeout "$cap" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== $title: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
    [ "$rc" = 0 ] || failed=1
}

step 60 "device" "$py" -c "import torch, os; print('torch', torch.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name(), '| cores', os.cpu_count())"
photos=()  # the packed photos when there are any; else naflow_speed.py times random inputs
ls .gpu/photos/* >/dev/null 2>&1 && photos=(--photos .gpu/photos)
if [ "$smoke" = 1 ]; then
    step 120 "CUDA tests (skipped without CUDA)" "$py" -m pytest -q -p no:cacheprovider tests/core/test_cuda.py systems/refer/tests/test_uniphd_data.py -k cuda
    step 120 "NAFlow speed" "$py" benchmarks/naflow_speed.py --device cpu --models mobilenet_v2 --batches 1 --max-iter 5 ${photos[@]+"${photos[@]}"}
    step 120 "perturbation floor" "$py" benchmarks/perturbation_floor.py --device cpu --models mobilenet_v2 --size 32 --repeats 1 --warmup 1 --sweep 16
else
    step 100 "CUDA tests" "$py" -m pytest -q -p no:cacheprovider tests/core/test_cuda.py systems/refer/tests/test_uniphd_data.py -k cuda
    step 200 "NAFlow speed" "$py" benchmarks/naflow_speed.py --device cuda --models mobilenet_v2,resnet50 --batches 1,8 --damps 0.1 ${photos[@]+"${photos[@]}"}
    step 220 "perturbation floor" "$py" benchmarks/perturbation_floor.py --device cuda --size 224 --repeats 3 --sweep 64,256,1024
fi
echo "gpu checks: $([ "$failed" = 0 ] && echo 'all steps passed' || echo 'a step failed'); log in $log" | tee -a "$log"
exit "$failed"
