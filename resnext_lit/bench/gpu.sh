#!/usr/bin/env bash
# ResNeXt-50 32x4d training throughput on one CUDA GPU, in one call (never in CI).
#
#   here:   scripts/prepare_gpu_carry.sh     # builds .gpu/ (ffcv for cp312 + libraries)
#   there:  bash resnext_lit/bench/gpu.sh    # device tool: carry [".gpu"], timeout_s 480
#   CPU rehearsal of the same Python:  python -m resnext_lit bench gpu --dry-run
#
# Writes gpu.json (figures, written after each part) and gpu.log to $OUT, else runs/bench.
# Ends within about 7.5 minutes: the Python part has its own budget (GPU_BENCH_BUDGET_S, 390 s)
# and a watchdog 30 s after it; `timeout` (GPU_BENCH_TIMEOUT_S, 440 s) backs both. Without
# .gpu/ (or if ffcv cannot import) the FFCV-fed part is skipped with one line.
# Extra arguments go to the benchmark (e.g. --no-compile).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR="${OUT:-runs/bench}"
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/gpu.log") 2>&1
tee_pid=$!
PY="${PYTHON:-python3}"

echo "== resnext_lit GPU benchmark, $(date -u +%FT%TZ), $(nproc) cores"
nvidia-smi || echo "nvidia-smi: not available"

if [ -d .gpu/wheels ]; then
    site=/tmp/resnext_site
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" \
            .gpu/wheels/*.whl; then
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "wheels: install failed; ffcv (and jsonargparse) may be missing"
    fi
    # Only the libraries this machine lacks: a carried copy of one it has (libz, libX11, ...)
    # would shadow the newer system one for every program in this process.
    libs=/tmp/resnext_ffcv_libs
    known="$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null | awk '{print $1}')"
    mkdir -p "$libs"
    for lib in .gpu/lib/*; do
        name="$(basename "$lib")"
        if ! grep -qxF "$name" <<< "$known"; then cp "$lib" "$libs/"; fi
    done
    echo "libraries taken from .gpu/lib: $(ls "$libs" | tr '\n' ' ')"
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
    echo ".gpu/ was not carried (scripts/prepare_gpu_carry.sh; carry [\".gpu\"]): no ffcv here"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'EOF'
import importlib, platform
from importlib import metadata
print("python", platform.python_version())
for name in ("torch", "lightning", "torchmetrics", "numba", "numpy", "cv2", "jsonargparse", "ffcv"):
    try:
        if name == "ffcv":
            try:
                import setuptools  # noqa: F401  (its distutils, which ffcv imports on 3.12)
            except ImportError:
                pass
        module = importlib.import_module(name)
        try:
            version = metadata.version(name)  # ffcv's own __version__ is stale
        except metadata.PackageNotFoundError:
            version = getattr(module, "__version__", "?")
        print(f"{name:13s}", version)
    except Exception as err:
        print(f"{name:13s} NOT IMPORTABLE: {type(err).__name__}: {str(err).splitlines()[0]}")
EOF

PYTHONUNBUFFERED=1 timeout -k 10 "${GPU_BENCH_TIMEOUT_S:-440}" "$PY" -m resnext_lit.bench.gpu \
    --budget-s "${GPU_BENCH_BUDGET_S:-390}" --out "$OUT_DIR/gpu.json" "$@"
status=$?
echo "== exit status $status; files in $OUT_DIR: $(ls "$OUT_DIR" | tr '\n' ' ')"
exec 1>&- 2>&-
wait "$tee_pid"  # the log is complete before the call returns
exit $status
