#!/usr/bin/env bash
# Build .gpu/ (gitignored, ~25 MB): what resnext_lit/bench/gpu.sh installs on the lent GPU machine,
# which has Python 3.12 with torch, lightning, numba and opencv but no internet, no ffcv and no
# jsonargparse (resnext_lit.training.module needs it).
#
#   scripts/prepare_gpu_carry.sh      # here, ~30 s (needs the FFCV set-up's apt packages)
#   then, through the device tool:  command "bash resnext_lit/bench/gpu.sh", carry [".gpu"]
#
# .gpu/wheels: ffcv 1.0.2 built for cp312 against this machine's libturbojpeg and OpenCV, and
#              the pure-Python packages it and we import that the GPU machine lacks;
# .gpu/lib:    the shared libraries ffcv's compiled module links (ldd), without the C and C++
#              runtimes and the loader, which the GPU machine has.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.gpu
FFCV="ffcv==1.0.2"
# ffcv's declared pure-Python needs, and jsonargparse for resnext_lit (versions as the venv's).
PURE=(pytorch_pfn_extras==0.9.0 fastargs==1.2.0 terminaltables==3.1.10 assertpy==1.1
      jsonargparse==4.53.0)
# Provided by the GPU machine's own system: never copied.
SYSTEM_LIBS='^(linux-vdso|libc\.so|libm\.so|libgcc_s\.so|libstdc\+\+\.so|ld-linux|libpthread\.so|libdl\.so|librt\.so)'
MAX_MB=40

find_python312() {
    if python3.12 --version >/dev/null 2>&1; then command -v python3.12; return; fi
    local root
    root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
    for candidate in "$root"/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do
        if [ -x "$candidate" ]; then echo "$candidate"; return; fi
    done
    echo "error: no Python 3.12 here (the GPU machine runs 3.12; ffcv must be built for it)" >&2
    exit 2
}

PY312="$(find_python312)"
VENV="$(mktemp -d)/v312"
trap 'rm -rf "$(dirname "$VENV")"' EXIT
echo "python 3.12: $PY312"
"$PY312" -m venv "$VENV"

rm -rf "$DEST"
mkdir -p "$DEST/wheels" "$DEST/lib"
"$VENV/bin/pip" wheel -q --no-deps -w "$DEST/wheels" "$FFCV" "${PURE[@]}"

# The libraries ffcv's extension links, resolved here; copied under the names it asks for.
unpacked="$(dirname "$VENV")/ffcv"
mkdir -p "$unpacked"
"$VENV/bin/python" -m zipfile -e "$DEST"/wheels/ffcv-*.whl "$unpacked"
extension="$(ls "$unpacked"/ffcv/_libffcv*.so)"
ldd "$extension" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
    if [[ "$name" =~ $SYSTEM_LIBS ]]; then continue; fi
    cp -L "$path" "$DEST/lib/$name"
done

# Every library must now resolve from .gpu/lib or the system runtimes excluded above.
missing="$(LD_LIBRARY_PATH="$DEST/lib" ldd "$extension" | grep 'not found' || true)"
if [ -n "$missing" ]; then
    echo "error: unresolved libraries:"; echo "$missing"; exit 1
fi
{
    echo "# made by scripts/prepare_gpu_carry.sh on $(date -u +%F) ($(uname -m))"
    ls "$DEST/wheels"
    ls "$DEST/lib"
} > "$DEST/MANIFEST.txt"

size_mb=$(du -sm "$DEST" | cut -f1)
echo "$DEST: $(ls "$DEST/wheels" | wc -l) wheels, $(ls "$DEST/lib" | wc -l) libraries, ${size_mb} MB"
if [ "$size_mb" -gt "$MAX_MB" ]; then
    echo "error: $DEST is over $MAX_MB MB; the device tool carries 64 MiB with the repo" >&2
    exit 1
fi
