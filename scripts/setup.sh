#!/usr/bin/env bash
# Installs everything kws needs on a fresh Debian/Ubuntu machine, from nothing:
# system libraries, a virtual environment in .venv, PyTorch, and kws itself.
# It is idempotent: a second run only checks. The Dockerfile runs this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# PortAudio for the microphone (sounddevice), libsndfile for soundfile,
# Chromium for the browser demo's end-to-end test.
DEB_PACKAGES="libportaudio2 libsndfile1 chromium chromium-driver"

missing=""
for p in $DEB_PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "setup: please install these Debian packages first:$missing" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  # torch's wheel brings its CUDA libraries: the environment takes about 6.5 GB.
  free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
  if [ "${free_kb:-0}" -lt $((8 * 1024 * 1024)) ]; then
    echo "setup: $(pwd) has $((free_kb / 1024)) MB free; .venv needs about 8 GB (torch and its CUDA libraries)" >&2
    exit 1
  fi
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
# torch first and pinned: this pair loads together (torchaudio 2.11 beside torch 2.14.1
# on the CPU); letting a resolver pick torch can pull a multi-GB build that does not.
$PIP install -q torch==2.14.1 torchaudio==2.11.0 2>&1 | grep -v "^WARNING: Location" || true
$PIP install -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, torchaudio, lightning, onnxruntime, librosa, soundfile, sounddevice" \
  || { echo "setup: the environment in .venv does not import; see the messages above" >&2; exit 1; }
echo "setup: ok ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
