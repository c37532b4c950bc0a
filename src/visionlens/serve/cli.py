"""``visionlens serve``: start the explorer (the ``serve`` extra) on 127.0.0.1 unless ``--host`` says otherwise."""

from __future__ import annotations

import contextlib
import sys

from ..checks import count
from ..errors import Terminated

DEFAULT_MODEL = "mobilenet_v2"


def _cmd_serve(args) -> int:
    from ..errors import InputError

    try:
        import uvicorn  # noqa: F401  (the serve extra)

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

    host = _bare_host(args.host)
    images = _images_folder(args)
    for flag, folder in (("--images", images), ("--results", args.results)):
        Explorer.folder(folder, flag)  # a bad folder fails before the models load
    specs = list(dict.fromkeys(args.model or [DEFAULT_MODEL]))
    weights = _weights_file(args.weights, specs)
    _check_port(host, args.port)
    models = {spec: load_model(spec, device=args.device, weights=weights) for spec in specs}
    explorer = Explorer(models, images=images, results=args.results,
                        max_upload_bytes=args.max_upload_mb * 1024 * 1024, max_pixels=args.max_pixels)
    print(f"visionlens explorer: {_url(host, args.port)} (models: {', '.join(models)}; Ctrl-C stops it)", flush=True)
    _say_if_truncated(explorer)
    if not _loopback(host):
        print(f"warning: --host {args.host} lets other machines reach the explorer, which has no login: anyone who "
              "can connect may run the models on uploads and read the listed images", file=sys.stderr, flush=True)
    interrupted = False
    try:
        with _ctrl_c() as pressed:
            try:
                _run(create_app(explorer, host=host), host, args.port)
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


def _run(app, host: str, port: int) -> None:
    """Serve ``app`` with uvicorn until it stops (as ``uvicorn.run``: SystemExit when it did not start)."""
    import uvicorn

    server = _server_class(uvicorn.Server)(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    try:
        server.run()
    except Terminated:  # SIGTERM or SIGHUP, re-raised once uvicorn has stopped: main() ends with 143 or 129
        raise
    except KeyboardInterrupt:
        pass
    if not server.started:
        raise SystemExit(3)


def _server_class(base):
    """uvicorn's server, saying so when the first Ctrl-C waits for the requests in progress, and
    ending the process at once (status 130) on the second."""
    import os
    import signal

    class Server(base):
        def handle_exit(self, sig, frame):
            if sig == signal.SIGINT and self.should_exit:
                print("interrupted", file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(130)
            if sig == signal.SIGINT:
                print("stopping: waiting for the requests in progress to finish (press Ctrl-C again to quit at once)",
                      file=sys.stderr, flush=True)
            super().handle_exit(sig, frame)

    return Server


def _bare_host(host: str) -> str:
    """``--host`` without the brackets of an IPv6 literal (``[::1]`` is ``::1``)."""
    host = host.strip()
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _url(host: str, port: int) -> str:
    """The explorer's address, with an IPv6 literal in brackets."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _say_if_truncated(explorer) -> None:
    """One line when the page lists only the first images of ``--images``."""
    from .safety import MAX_LISTED

    total = explorer.describe()["images_total"]
    if total is not None and total > MAX_LISTED:
        print(f"note: --images holds {total:,} images; the page lists the first {MAX_LISTED:,} (sorted by name)",
              file=sys.stderr, flush=True)


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
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
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
