#!/usr/bin/env bash
# One-command set-up behind `make test` and `make demo`: FFCV's system libraries, then a .venv
# with the pinned requirements. The venv is rebuilt only when requirements.txt changes (a stamp
# keyed on its hash), so a second run with nothing changed takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
pkgs=(pkg-config libturbojpeg0-dev libopencv-dev)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then sudo=""
  elif sudo -n true 2>/dev/null; then sudo="sudo -n"
  else echo "error: FFCV needs system packages ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2; exit 1
  fi
  echo "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

stamp=".venv/.requirements-$(sha256sum requirements.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "building .venv from requirements.txt (first run: several minutes)"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  .venv/bin/pip install -q --no-deps --no-build-isolation -e .
  rm -f .venv/.requirements-*
  touch "$stamp"
fi
