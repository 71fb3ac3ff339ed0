#!/usr/bin/env bash
# Here, before a lent GPU is used: carry what its image lacks, and leave behind what it
# does not need. The device takes the working tree (64 MiB in all), so the data goes as
# an Opus copy (about 14% of the WAV size; the split is the original's) in the
# git-ignored .gpu_data/, the wheels that `kws train` needs beyond the image (soundfile
# with its libsndfile, cffi, pycparser, soxr), for its Python 3.12, in the git-ignored
# .whl/, and the ONNX exports (a third of the tracked tree; training does not read them)
# wait in the git-ignored .gpu_hold/ until the call is over.
#
#   bash scripts/gpu_kit.sh [DATA]    build the kit, hold export/*.onnx aside, check the size
#   (run `bash scripts/gpu_session.sh` there, with carry [".gpu_data", ".whl"])
#   bash scripts/gpu_kit.sh --restore put the exports back (or: git checkout -- export)
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=$((64 * 1048576))

if [ "${1:-}" = "--restore" ]; then
  [ -d .gpu_hold/export ] || { echo "gpu_kit: nothing held in .gpu_hold/export"; exit 0; }
  find .gpu_hold/export -maxdepth 1 -name '*.onnx' -exec mv -n -t export {} +
  rmdir .gpu_hold/export .gpu_hold 2>/dev/null || true
  git diff --quiet -- export || { echo "gpu_kit: export/ differs from git after restore" >&2; exit 1; }
  echo "gpu_kit: export/ restored"
  exit 0
fi

DATA=${1:-../shared/data/speech_commands_test_set_v0.02_dev}
[ -d "$DATA" ] || { echo "gpu_kit: no data folder $DATA" >&2; exit 1; }
[ -d ".gpu_data/$(basename "$DATA")" ] ||
  .venv/bin/kws data convert "$DATA" --out ".gpu_data/$(basename "$DATA")" --format opus

mkdir -p .whl
for name in soundfile cffi pycparser soxr; do
  version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")
  ls .whl/"$name"-"$version"-*.whl >/dev/null 2>&1 && continue
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$name==$version"
done

mkdir -p .gpu_hold/export
find export -maxdepth 1 -name '*.onnx' -exec mv -t .gpu_hold/export {} +

# what travels: the tracked files now in the tree, plus the carried folders
tree=$( (git ls-files -z | xargs -0 stat -c %s 2>/dev/null || true) | awk '{s += $1} END {print s + 0}')
carry=$(du -cb .gpu_data .whl | tail -1 | cut -f1)
echo "tracked tree $((tree / 1048576)) MiB (export/*.onnx held in .gpu_hold/) + .gpu_data" \
  "and .whl $((carry / 1048576)) MiB = $(((tree + carry) / 1048576)) MiB of the 64 MiB a device call takes"
echo "after the device call: bash scripts/gpu_kit.sh --restore"
[ $((tree + carry)) -lt $LIMIT ] || { echo "gpu_kit: too big to carry" >&2; exit 1; }
