"""``visionlens serve``: start the explorer (the ``serve`` extra) on 127.0.0.1 unless ``--host`` says otherwise."""

from __future__ import annotations

import contextlib
import sys

from ..checks import count

DEFAULT_MODEL = "mobilenet_v2"


def _cmd_serve(args) -> int:
    from ..errors import InputError

    try:
        import uvicorn

        from .app import create_app
    except ImportError as err:
        raise InputError(f"`visionlens serve` needs the serve extra ({err.name} is missing): "
                         "pip install 'visionlens[serve]'") from None
    import importlib.util

    if not any(importlib.util.find_spec(name) for name in ("python_multipart", "multipart")):  # FastAPI's uploads
        raise InputError("`visionlens serve` needs the serve extra (python-multipart is missing): "
                         "pip install 'visionlens[serve]'")
    from ..models import load_model
    from .explorer import Explorer

    images = _images_folder(args)
    for flag, folder in (("--images", images), ("--results", args.results)):
        Explorer.folder(folder, flag)  # a bad folder fails before the models load
    specs = list(dict.fromkeys(args.model or [DEFAULT_MODEL]))
    weights = _weights_file(args.weights, specs)
    _check_port(args.host, args.port)
    models = {spec: load_model(spec, device=args.device, weights=weights) for spec in specs}
    explorer = Explorer(models, images=images, results=args.results,
                        max_upload_bytes=args.max_upload_mb * 1024 * 1024, max_pixels=args.max_pixels)
    print(f"visionlens explorer: http://{args.host}:{args.port}/ (models: {', '.join(models)}; Ctrl-C stops it)", flush=True)
    if not _loopback(args.host):
        print(f"warning: --host {args.host} lets other machines reach the explorer, which has no login: anyone who "
              "can connect may run the models on uploads and read the listed images", file=sys.stderr, flush=True)
    interrupted = False
    try:
        with _ctrl_c() as pressed:
            try:
                uvicorn.run(create_app(explorer), host=args.host, port=args.port, log_level="warning")
            except SystemExit:  # uvicorn's exit when the server did not start: here, Ctrl-C while it started
                if not pressed:
                    raise
        if pressed:  # the server has stopped (its jobs too): end as every command ends on Ctrl-C
            raise KeyboardInterrupt
    except KeyboardInterrupt:  # main() says "interrupted", exit 130
        interrupted = True
        raise
    finally:
        _stop_jobs(explorer, 130 if interrupted else 0)
    return 0


@contextlib.contextmanager
def _ctrl_c():
    """While the server runs, SIGINT raises KeyboardInterrupt, whatever handler the process started
    with, and the yielded list says whether it came. uvicorn catches Ctrl-C itself, stops the
    server (the app cancels its jobs and waits for their threads), restores the handler it found,
    sends the signal again and swallows the KeyboardInterrupt: by the list, the command still ends
    with "interrupted" and 130, as every command does on Ctrl-C (also when SIGINT was ignored)."""
    import asyncio
    import signal
    import threading

    pressed: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return

    def interrupt(signum, frame):
        pressed.append(True)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not in the server's event loop (starting, or stopped): stop now
            raise KeyboardInterrupt from None
        # in the event loop: uvicorn's signal again, once the server has stopped; raised there it
        # would cancel what is left of the loop with tracebacks in the log, so it is only noted

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def _weights_file(weights, specs: list[str]):
    """``--weights``, which applies to one model only; checked before anything loads."""
    from ..errors import InputError

    if weights is None:
        return None
    if len(specs) != 1:
        raise InputError(f"--weights is for one model, but {len(specs)} are given ({', '.join(specs)}); "
                         "serve a model with its own weights on its own")
    return weights


def _stop_jobs(explorer, status: int) -> None:
    """Cancel the jobs still running and wait for their threads, so that no torch work runs while
    the interpreter shuts down (which would abort the process). The app already did so on a clean
    shutdown; this covers a forced one (a second Ctrl-C). If a job does not stop in time, or
    Ctrl-C is pressed again while waiting, the process ends at once with ``status``."""
    import os

    try:
        stopped = explorer.close()
    except KeyboardInterrupt:
        stopped, status = False, 130
    if not stopped:
        print("warning: a running job did not stop; exiting without waiting for it", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(status)


def _loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    import ipaddress
    import socket

    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def _check_port(host: str, port: int) -> None:
    """One :class:`InputError` line when ``host:port`` cannot be listened on (in use, or not this machine's)."""
    import socket

    from ..errors import InputError

    if not host.strip():  # '' would listen on every network interface
        raise InputError("--host is empty; give an address to listen on (127.0.0.1, the default: this machine only)")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        raise InputError(f"cannot listen on {host}:{port} ({err.strerror or err}); choose another --port or --host") from None


def _images_folder(args):
    """``--images``, or with ``--samples`` the folder of the bundled ImageNet sample photos."""
    if not args.samples:
        return args.images
    from ..errors import InputError

    if args.images is not None:
        raise InputError("give --images DIR or --samples, not both")
    from ..data.samples import sample_images

    return sample_images("imagenet")[0].parent


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="interactive explorer in the browser: maps of uploaded or listed images "
                                            "(needs the serve extra)")
    p.add_argument("--model", action="append", default=None,
                   help="zoo model or model spec to load once and keep (repeat for several; default mobilenet_v2)")
    p.add_argument("--images", default=None, help="folder whose images the page lists (nothing outside it is served)")
    p.add_argument("--samples", action="store_true", help="list the bundled sample photos (instead of --images)")
    p.add_argument("--weights", default=None,
                   help="local state-dict file for the one model served (a zoo model or torchvision:NAME/timm:NAME, "
                        "as explain's --weights): serves a timm:/torchvision: model offline")
    p.add_argument("--results", default=None, help="folder of `visionlens evaluate` results whose report cards the page opens")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=count(maximum=65535), default=8000, help="port (default 8000)")
    p.add_argument("--device", default="auto", help="device of the models: cpu, cuda, cuda:N or auto (CUDA when available)")
    p.add_argument("--max-upload-mb", type=count(maximum=1024), default=20, help="largest upload in MiB (default 20)")
    p.add_argument("--max-pixels", type=count(), default=40_000_000,
                   help="largest upload in pixels, checked before decoding (default 40,000,000)")
    p.set_defaults(func=_cmd_serve)
