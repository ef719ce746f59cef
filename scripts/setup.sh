#!/usr/bin/env bash
# One-command set-up behind `make test` and `make demo`: FFCV's system libraries, then a .venv
# with the pinned requirements. The venv is rebuilt only when requirements.txt or pyproject.toml
# changes (a stamp keyed on their hash), so a second run with nothing changed takes about a second and prints
# nothing.
#
# The console gets one line per step; apt's and pip's own output (warnings included) goes to
# .venv/setup.log. On a failure the script prints the log's last lines and its path, and exits
# with the failed command's status. PYTHON picks the interpreter the venv is made from.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# FFCV's build needs the first three; the suite's real SLURM cluster (tests/test_slurm.py) the last two.
pkgs=(pkg-config libturbojpeg0-dev libopencv-dev slurm-wlm munge)
# pyproject.toml too: the editable install's metadata (its console script, extras) lives there.
stamp=".venv/.requirements-$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
log=.venv/setup.log
TAIL_LINES=20

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)) && [ -f "$stamp" ]; then
  exit 0  # nothing to do
fi

start=$SECONDS
# The log lives in the venv's folder, made first so that it outlives a first build that fails;
# `python -m venv` builds into the existing folder.
mkdir -p .venv
: > "$log"

# step "what": one console line, finished by `ok` with the step's time.
step() {
  printf 'setup: %-58s' "$1"
  step_start=$SECONDS
}
ok() {
  printf ' %4d s\n' $((SECONDS - step_start))
}
# quiet CMD...: CMD's output to the log; on failure its tail and the log's path, then exit.
quiet() {
  local status=0
  echo "+ $*" >> "$log"
  "$@" >> "$log" 2>&1 || status=$?
  if ((status)); then
    printf ' FAILED\n'
    {
      echo "setup: '$*' exited with status $status; the last $TAIL_LINES lines of its log:"
      tail -n "$TAIL_LINES" "$log" | sed 's/^/  | /'
      echo "setup: full log: $PWD/$log"
    } >&2
    exit "$status"
  fi
}

if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then sudo=""
  elif sudo -n true 2>/dev/null; then sudo="sudo -n"
  else echo "error: set-up needs system packages ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2; exit 1
  fi
  step "system packages (apt-get): ${missing[*]}"
  quiet $sudo apt-get update -q
  quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  ok
fi

if [ ! -f "$stamp" ]; then
  rm -f .venv/.requirements-*  # a rebuild that fails half-way must not look finished
  step "venv .venv ($("$PYTHON" --version 2>&1 || echo "$PYTHON")), latest pip"
  quiet "$PYTHON" -m venv .venv
  quiet .venv/bin/pip install --upgrade pip
  ok
  step "pinned requirements.txt (first run: several minutes)"
  quiet .venv/bin/pip install -r requirements.txt
  ok
  step "editable install of resnext_lit"
  quiet .venv/bin/pip install --no-deps --no-build-isolation -e .
  ok
  touch "$stamp"
fi
echo "setup: done in $((SECONDS - start)) s (pip and apt output: $log)"
