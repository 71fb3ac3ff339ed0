"""``kws export``: a checkpoint to a verified ONNX file and its JSON sidecar.

Heavy imports (torch, onnx) wait until the command runs, so ``kws --help`` stays quick.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (clip or streaming step) with a JSON sidecar",
        description=(
            "Write OUT (.onnx) and OUT's .json sidecar. The export checks itself: "
            "onnxruntime must reproduce torch on random and real audio within --tolerance, "
            "and a streamed clip must give the clip model's logits, or nothing is written."
        ),
    )
    p.add_argument("checkpoint", type=Path, help="a kws checkpoint (.pt, or a kws train .ckpt)")
    p.add_argument("--out", type=Path, required=True, help="the ONNX file, e.g. export/NAME.onnx")
    p.add_argument("--streaming", action="store_true",
                   help="a streaming step model (audio chunk and states in, logits and "
                   "next states out) instead of a one-clip model")
    p.add_argument("--chunk-ms", type=float, default=10.0,
                   help="audio per step of a streaming export, in ms (default 10)")
    p.add_argument("--rate", type=int, default=None,
                   help="sample rate of the audio it will get (default: the trained rate); "
                   "a raw-audio S4 model gets its step dt rescaled, with no retraining")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, at least 17 (default 17)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest relative error onnx vs torch accepted (default 1e-4)")
    p.add_argument("--check-audio", type=Path, default=None,
                   help="a real clip for the parity check (default: the first keyword clip "
                   "of the Speech Commands data when found, else a synthetic clip)")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from kws.cli import UserError
    from kws.export.onnx_export import export_spotter
    from kws.export.verify import ParityError
    from kws.training.checkpoint import load_spotter

    if args.chunk_ms <= 0:
        raise UserError(f"--chunk-ms must be positive, got {args.chunk_ms:g}")
    if args.rate is not None and args.rate <= 0:
        raise UserError(f"--rate must be a positive number of Hz, got {args.rate}")
    spotter, _ = load_spotter(args.checkpoint)
    check_audio = None
    if args.check_audio is not None:
        from kws.data.audio import load_audio

        rate = args.rate or spotter.sample_rate
        samples = load_audio(args.check_audio, rate, length=spotter.clip_samples(rate))
        check_audio = (samples, str(args.check_audio))
    try:
        spec = export_spotter(
            spotter,
            args.out,
            streaming=args.streaming,
            chunk_ms=args.chunk_ms,
            sample_rate=args.rate,
            opset=args.opset,
            tolerance=args.tolerance,
            source_checkpoint=str(args.checkpoint),
            check_audio=check_audio,
        )
    except ParityError as err:
        raise UserError(f"export failed its parity check, nothing written: {err}") from err
    what = f"streaming, {spec.chunk_samples} samples per step" if spec.kind == "streaming" else (
        f"clip of {spec.clip_samples} samples"
    )
    print(
        f"wrote {args.out} ({spec.file_bytes:,} bytes, {spec.n_parameters:,} parameters; {what} "
        f"at {spec.sample_rate} Hz, rate_factor {spec.rate_factor:g}) and {spec.path}\n"
        f"parity: max relative error {spec.parity['max_rel_err']:.2g} "
        f"(tolerance {spec.parity['tolerance']:g}) on random audio and {spec.parity['audio']}"
    )
    return 0
