"""``kws listen`` (microphone, terminal) and ``kws serve`` (microphone, browser).

Both run one ``StreamingDetector`` per microphone with the options of ``kws stream``;
heavy imports (sounddevice, onnxruntime, websockets) wait until a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from kws.cli import UserError
from kws.demo import DetectorFactory


def add_model_options(parser: argparse.ArgumentParser) -> None:
    from kws.streaming.cli import THRESHOLD_HELP, add_detector_options

    parser.add_argument("--model", type=Path, default=None,
                        help="an exported .onnx (its .json sidecar beside it) or a .pt "
                        "checkpoint (default: export/s4_mfcc_ctx_stream.onnx, else the first "
                        "streaming MFCC S4 export there)")
    parser.add_argument("--threshold", type=float, default=None, help=THRESHOLD_HELP)
    parser.add_argument("--keyword-threshold", action="append", default=[], metavar="WORD=T",
                        help="a threshold for one keyword, e.g. --keyword-threshold yes=0.9")
    parser.add_argument("--stand-in", default=None, metavar="WORDS",
                        help="run with no model: each loud sound is taken for the next of these "
                        "comma-separated words, e.g. yes,stop,left (tries the audio path)")
    add_detector_options(parser)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    listen = subparsers.add_parser(
        "listen", help="live keyword spotting on the microphone, in the terminal",
        description="Listen to a microphone at its native rate, resample to the model's, and "
        "show the level, the top posteriors and the detected keywords live. Ctrl-C stops.",
    )
    add_model_options(listen)
    listen.add_argument("--device", default=None,
                        help="input device: its index or part of its name (default: the "
                        "system's default input; see --list-devices)")
    listen.add_argument("--list-devices", action="store_true",
                        help="list the audio input devices and exit")
    listen.set_defaults(handler=run_listen)

    serve = subparsers.add_parser(
        "serve", help="live keyword spotting in a web page (the microphone streams to here)",
        description="Serve a local web page that streams the microphone over a WebSocket to "
        "the detector running here, and shows live posteriors and detected keywords.",
    )
    add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only; browsers "
                       "allow the microphone only on localhost or https pages)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    serve.add_argument("--max-clients", type=int, default=32,
                       help="concurrent microphones served (default 32)")
    serve.set_defaults(handler=run_serve)


def open_detector_factory(args: argparse.Namespace) -> tuple[DetectorFactory, str]:
    """One detector per microphone from the shared options; and a name for what runs."""
    from kws.demo import StandInBackend, default_model, detector_factory
    from kws.streaming.backends import StepBackend, open_backend
    from kws.streaming.cli import detector_threshold, open_verifier, parse_keyword_thresholds

    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    backend: StepBackend
    if args.stand_in is not None:
        if args.model is not None or args.verifier is not None:
            raise UserError("--stand-in runs instead of a model: give --model (and "
                            "--verifier) or --stand-in")
        chunk_ms = 10.0 if args.chunk_ms is None else args.chunk_ms
        backend = StandInBackend(args.stand_in.split(","), chunk_ms=chunk_ms)
        name = f"stand-in for a model (loud sounds are {', '.join(backend.script)})"
    else:
        model = args.model or default_model()
        backend = open_backend(model, threads=args.threads, chunk_ms=args.chunk_ms,
                               copies=args.copies)
        name = str(model)
    factory = detector_factory(
        backend, threshold=detector_threshold(args),
        thresholds=parse_keyword_thresholds(args.keyword_threshold),
        smoothing_ms=args.smoothing_ms, refractory_ms=args.refractory_ms, hold_ms=args.hold_ms,
        reset_period_s=args.reset_period, copies=args.copies,
        verifier=open_verifier(args, backend.sample_rate),
    )
    if args.verifier is not None:
        name += f", verified by {args.verifier}"
    return factory, name


def run_listen(args: argparse.Namespace) -> int:
    from kws.demo.listen import (
        describe_devices,
        import_sounddevice,
        listen,
        open_microphone,
        pick_input_device,
    )

    sd = import_sounddevice()
    if args.list_devices:
        print(describe_devices(sd))
        return 0
    device = pick_input_device(sd, args.device)  # before the model: no microphone, no wait
    make_detector, name = open_detector_factory(args)
    detector = make_detector()
    rate, stream_factory = open_microphone(sd, device)
    title = (f"kws listen: {name}\n{device['name']} at {rate} Hz -> model at "
             f"{detector.sample_rate} Hz")
    try:
        result = listen(detector, stream_factory, rate, title=title)
    except sd.PortAudioError as err:
        raise UserError(f"input device {device['name']}: {err}") from err
    print(f"{result.input_s:.1f} s heard, {len(result.events)} keyword(s), "
          f"{result.overflows} input overflow(s), {result.dropped} dropped block(s)",
          file=sys.stderr)
    if not result.interrupted:
        raise UserError(f"the input stream of {device['name']} stopped (device unplugged?)")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from kws.demo.server import DemoServer, serve_until_cancelled

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in [0, 65535], got {args.port}")
    if args.max_clients < 1:
        raise UserError(f"--max-clients must be >= 1, got {args.max_clients}")
    make_detector, name = open_detector_factory(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # not a line per HTTP request
    server = DemoServer(make_detector, args.host, args.port, max_clients=args.max_clients)

    def announce(server: DemoServer) -> None:
        print(f"kws serve: {name}\nopen {server.url} in a browser (Ctrl-C to stop)", flush=True)
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"note: bound to {args.host}, so other machines can reach this page; their "
                  "browsers allow the microphone only if it is served over https", flush=True)

    try:
        asyncio.run(serve_until_cancelled(server, announce))
    except OSError as err:
        raise UserError(f"cannot serve on {args.host}:{args.port} ({err})") from err
    except KeyboardInterrupt:
        pass
    return 0
