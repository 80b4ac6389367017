#!/usr/bin/env bash
# The GPU check (issue 11, point 6): NVML detection vs nimbuild/skus.yaml, and the fp8 graph's matmuls as
# real FP8 E4M3 GEMMs (torch._scaled_mm) with the graph's own scales, against ONNX Runtime's CPU simulation.
# A few minutes at most. Details: scripts/gpu_check.py.
#
#   On the build machine (CPU, the dev venv), once per fp8 graph:
#     scripts/gpu_check.sh prepare [EXPORT_DIR] [BUNDLE_DIR]
#       EXPORT_DIR: an export with onnx/fp8 (default out/example-tiny; made here when missing)
#       BUNDLE_DIR: default .cache/gpu-check/<export folder name> (gitignored: carry it to the GPU machine)
#   On the GPU machine (python3 with torch CUDA and nvidia-ml-py; nothing else needed, no network):
#     scripts/gpu_check.sh run [BUNDLE_DIR...]      (default: every bundle under .cache/gpu-check/)
#   Anywhere, without a GPU (checks the same code on the CPU; no hardware verdict):
#     scripts/gpu_check.sh cpu [BUNDLE_DIR...]
#
# Results: <bundle>/result-<host>.json, and $OUT/ when that is set. Exit 0 when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

mode="${1:-run}"
shift || true
case "$mode" in
prepare)
    py=.venv/bin/python
    [ -x "$py" ] || { echo "error: prepare needs the dev venv (.venv); run 'make venv' first" >&2; exit 1; }
    export_dir="${1:-out/example-tiny}"
    bundle="${2:-.cache/gpu-check/$(basename "$export_dir")}"
    if [ ! -f "$export_dir/onnx/fp8/model.onnx" ] && [ "$export_dir" = out/example-tiny ]; then
        .venv/bin/nimbuild export recipes/example-tiny.yaml --out "$export_dir" --precision fp8 --force
    fi
    exec "$py" scripts/gpu_check.py prepare --export "$export_dir" --bundle "$bundle"
    ;;
run | cpu)
    py="${PYTHON:-python3}"
    if [ -z "${PYTHON:-}" ] && [ "$mode" = cpu ] && [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
    "$py" -c 'import torch, numpy' 2>/dev/null || { echo "error: $py has no torch/numpy" >&2; exit 1; }
    bundles=("$@")
    if [ ${#bundles[@]} -eq 0 ]; then
        shopt -s nullglob
        bundles=(.cache/gpu-check/*/)
    fi
    [ ${#bundles[@]} -gt 0 ] || { echo "error: no bundle; run 'scripts/gpu_check.sh prepare' on the build machine first" >&2; exit 1; }
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,pci.device_id,memory.total,driver_version --format=csv || true
    flag=()
    [ "$mode" = cpu ] && flag=(--cpu)
    status=0
    for bundle in "${bundles[@]}"; do
        bundle="${bundle%/}"
        result="$bundle/result-$(hostname).json"
        echo "== $bundle"
        timeout 600 "$py" scripts/gpu_check.py run --bundle "$bundle" "${flag[@]}" --json "$result" || status=1
        if [ -n "${OUT:-}" ]; then cp "$result" "$OUT/$(basename "$bundle").json"; fi
    done
    exit $status
    ;;
*)
    echo "usage: $0 prepare [EXPORT_DIR] [BUNDLE_DIR] | run [BUNDLE_DIR...] | cpu [BUNDLE_DIR...]" >&2
    exit 2
    ;;
esac
