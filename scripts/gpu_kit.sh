#!/usr/bin/env bash
# Here, before a lent GPU is used: carry what its image lacks. The device takes the
# working tree (64 MiB in all), so the data goes as an Opus copy (about 14% of the
# WAV size; the split is the original's) in the git-ignored .gpu_data/, and the
# wheels that `kws train` needs beyond the image (soundfile with its libsndfile,
# cffi, pycparser, soxr), for its Python 3.12, in the git-ignored .whl/.
# Then: run `bash scripts/gpu_session.sh` there with carry [".gpu_data", ".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/speech_commands_test_set_v0.02_dev}
[ -d "$DATA" ] || { echo "gpu_kit: no data folder $DATA" >&2; exit 1; }
.venv/bin/kws data convert "$DATA" --out ".gpu_data/$(basename "$DATA")" --format opus

mkdir -p .whl
for name in soundfile cffi pycparser soxr; do
  version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")
  ls .whl/"$name"-"$version"-*.whl >/dev/null 2>&1 && continue
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$name==$version"
done

tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carry=$(du -cb .gpu_data .whl | tail -1 | cut -f1)
echo "tracked tree $((tree / 1048576)) MiB + .gpu_data and .whl $((carry / 1048576)) MiB" \
  "= $(((tree + carry) / 1048576)) MiB of the 64 MiB a device call takes"
[ $((tree + carry)) -lt $((64 * 1048576)) ] || { echo "gpu_kit: too big to carry" >&2; exit 1; }
