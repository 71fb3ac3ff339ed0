"""Windows for training a verifier: what the detector's candidates look like on training audio.

A verifier (``kws.streaming.verifier``) judges windows that end a fixed delay after
each candidate of the detector, while it was trained on centred one-second clips,
and it most needs to reject the detector's confusions. This script builds long
streams from the *train* split (speakers the models already heard; the validation
and test speakers stay unheard), runs the detector once per stream, and writes the
window of every candidate at each delay as a clip in the test-set layout, labelled
by what plays in it: the keyword folder of the keyword that overlaps it most, or
``_unknown_`` (prefixed with the word heard, or ``noise``). ``data.extra_train`` then
adds them to a verifier's training:

    .venv/bin/python benchmarks/mine_verifier_windows.py --model export/s4_mfcc_ctx_stream.onnx \\
        --data ../shared/data/speech_commands_test_set_v0.02_dev --minutes 60 --seeds 21,22 \\
        --delays 300,400,500 --out runs/mined_ctx
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from kws.data.audio import save_audio
from kws.data.speech_commands import SC10, UNKNOWN, find_data_root, speaker_of
from kws.streaming.backends import open_backend
from kws.streaming.engine import StreamingDetector, decode_trace
from kws.streaming.longstream import Placement, record_long_stream
from kws.streaming.verifier import DEFAULT_CANDIDATE_THRESHOLD, clip_window

#: a window holds a clip when they overlap by at least this much (seconds)
MIN_OVERLAP_S = 0.3


def label_window(start_s: float, end_s: float, placements: list[Placement]) -> Placement | None:
    """The clip that overlaps [start_s, end_s] most, if by at least ``MIN_OVERLAP_S``."""
    best, most = None, MIN_OVERLAP_S
    for p in placements:
        overlap = min(p.end_s, end_s) - max(p.start_s, start_s)
        if overlap >= most:
            best, most = p, overlap
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the detector (streaming ONNX or .pt)")
    parser.add_argument("--data", default=None)
    parser.add_argument("--minutes", type=float, default=60.0, help="per stream")
    parser.add_argument("--seeds", default="21", help="one stream per seed")
    parser.add_argument("--delays", default="400", help="window ends, ms after the candidate")
    parser.add_argument("--candidate-threshold", type=float,
                        default=DEFAULT_CANDIDATE_THRESHOLD)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    delays = [float(x) for x in args.delays.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty")

    root = find_data_root(args.data)
    counts: Counter[str] = Counter()
    written = 0
    for seed in seeds:
        detector = StreamingDetector(open_backend(args.model), record=True)
        rate = detector.sample_rate
        stream, trace, _ = record_long_stream(detector, root, args.minutes, seed, "train")
        candidates = decode_trace(trace, detector.labels, detector.chunk_s,
                                  detector.backend.window_s, threshold=args.candidate_threshold)
        for i, candidate in enumerate(candidates):
            for delay in delays:
                end = round((candidate.end_s + delay / 1000) * rate)
                if end > stream.audio.size:
                    continue  # past the end of the stream: no real audio to learn from
                window = clip_window(stream.audio, end, rate)
                heard = label_window(end / rate - 1.0, end / rate, stream.placements)
                speaker = speaker_of(Path(heard.path).name) if heard else None
                speaker = speaker or speaker_of(Path(stream.placements[0].path).name)
                name = f"{speaker}_nohash_{seed}{i:05d}{round(delay):04d}.wav"
                if heard is not None and heard.word in SC10:
                    folder, label = args.out / heard.word, heard.word
                else:
                    word = heard.word if heard is not None else "noise"
                    folder, label = args.out / UNKNOWN, UNKNOWN
                    name = f"{word}_{name}"
                folder.mkdir(parents=True, exist_ok=True)
                save_audio(folder / name, window, rate)
                counts[f"{label} ({'hit' if label == candidate.keyword else 'confusion'})"] += 1
                written += 1
        print(f"seed {seed}: {len(candidates)} candidates in {stream.duration_s / 60:.0f} min",
              flush=True)
    summary = {"model": args.model, "data": str(root), "split": "train", "seeds": seeds,
               "minutes": args.minutes, "delays_ms": delays,
               "candidate_threshold": args.candidate_threshold, "windows": written,
               "by_label": dict(sorted(counts.items()))}
    (args.out / "mined.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
