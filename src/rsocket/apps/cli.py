"""The ``rsocket`` command line: ``demo``, ``worker``, ``serve``, ``bench``.

Examples::

    rsocket demo                          # the incident replay, ~60 s, PASS/FAIL
    rsocket demo --duration 10 --json     # one JSON summary on stdout
    rsocket demo --bridge                 # the same against the Baileys bridge (Node)
    rsocket demo --workers 3              # 3 worker processes share 30 tenants via Redis
    rsocket demo --bridge --workers 3 --bridges 2   # ... served by 2 bridges sharing them too
    rsocket worker --redis redis://127.0.0.1:6379/0 --tenants tenants.json
    rsocket serve --port 8765 --tenants 3 --rate 100
    rsocket bench                         # buffer gate + socket throughput tables
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from .. import __version__
from . import logformat
from .runtime import run

__all__ = ["main"]

T = TypeVar("T")


def _positive(kind: type[int] | type[float]) -> Callable[[str], float | int]:
    noun = "integer" if kind is int else "number"

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            article = "an" if noun == "integer" else "a"
            raise argparse.ArgumentTypeError(f"expected {article} {noun}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {noun}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _share(text: str) -> float:
    value = _non_negative(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1), got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines on stderr: text (default) or JSON objects")
    common.add_argument("--log-level", default=None,
                        help="DEBUG, INFO, WARNING (default; ERROR for the live demo)...")
    common.add_argument("--metrics-port", type=_positive(int), default=None,
                        help="serve Prometheus metrics on 127.0.0.1:PORT (needs the 'metrics' extra)")

    parser = argparse.ArgumentParser(
        prog="rsocket", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Long-lived event sockets for chat bots: demo, worker, serve, bench.",
        epilog="examples:" + __doc__.split("Examples::")[1].rstrip()
        + "\n\nRun 'rsocket COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"rsocket {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="replay the production incident (reconnects under 503s) and check for leaks",
        description="Start a reference server on loopback and a pool of tenants, stream the "
                    "standard event mix, inject 503 stream errors and TCP drops, then report "
                    "lost/duplicated events, flush rate and live buffers. Exit 0 on PASS.",
        epilog="examples:\n  rsocket demo\n  rsocket demo --duration 10 --tenants 3 --json"
               "\n  rsocket demo --bridge --duration 20 --json",
    )
    demo.add_argument("--duration", type=_positive(float), default=None,
                      help="seconds of traffic and faults (default 50; ~60 s with the drain; "
                           "with --workers 20)")
    demo.add_argument("--tenants", type=_positive(int), default=None,
                      help="tenants (default 5; with --workers 30)")
    demo.add_argument("--rate", type=_positive(float), default=None,
                      help="events/s per tenant (default 200; with --workers 50)")
    demo.add_argument("--faults-per-min", type=_non_negative, default=60.0,
                      help="503s and TCP drops per minute over all tenants (default 60)")
    demo.add_argument("--faults", choices=("mixed", "503"), default="mixed",
                      help="mixed: 70%% 503 stream errors, 30%% TCP drops (default); "
                           "503: stream errors only")
    demo.add_argument("--handler-faults", type=_share, default=0.0, metavar="RATE",
                      help="share of batches (0-1) whose first handler call raises: they are "
                           "retried, and none may be lost (default 0)")
    demo.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    demo.add_argument("--json", action="store_true",
                      help="print only the summary, as one JSON object, on stdout")
    demo.add_argument("--bridge", action="store_true",
                      help="serve the tenants from the Baileys bridge (bridge/, Node 20) fed "
                           "by Baileys' own event emitter, instead of the reference server")
    cluster = demo.add_argument_group(
        "several workers (Redis)",
        "--workers N runs N worker processes sharing the tenants through Redis, kills one "
        "with SIGKILL mid-run and checks the takeover (needs --redis URL or a local "
        "redis-server binary)")
    cluster.add_argument("--workers", type=_positive(int), default=None,
                         help="worker processes (e.g. 3)")
    cluster.add_argument("--redis", default=None, metavar="URL",
                         help="Redis to use (default: start redis-server on loopback)")
    cluster.add_argument("--ttl", type=_positive(float), default=5.0,
                         help="lease ttl in seconds (default 5)")
    cluster.add_argument("--bridges", type=_positive(int), default=None, metavar="M",
                         help="with --bridge: M bridge processes share the accounts through "
                              "the same Redis; one bridge is killed too (e.g. 2)")

    worker = commands.add_parser(
        "worker", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run one worker of a fleet that shares the tenants through Redis",
        description="Run the tenants whose Redis leases this worker holds (every worker gets "
                    "the whole list), resume from the shared cursors, append every released "
                    "batch to a Redis Stream. Stops gracefully on SIGINT/SIGTERM (cursors "
                    "saved, leases released) and prints its counters as JSON on stdout.",
        epilog="tenants file (JSON):\n"
               '  {"url": "ws://127.0.0.1:8765", "tenants": {"t1": "token1", "t2": "token2"}}\n'
               "example:\n"
               "  rsocket worker --redis redis://127.0.0.1:6379/0 --tenants tenants.json "
               "--capacity 400",
    )
    worker.add_argument("--redis", required=True, metavar="URL", help="redis://host:port/db")
    worker.add_argument("--tenants", required=True, metavar="FILE", help="the tenants file")
    worker.add_argument("--capacity", type=_positive(int), default=None,
                        help="most tenants this worker runs at once (default: no bound)")
    worker.add_argument("--ttl", type=_positive(float), default=15.0,
                        help="lease ttl in seconds (default 15)")
    worker.add_argument("--worker-id", default=None, help="default host:pid:random")
    worker.add_argument("--prefix", default="rsocket", help="Redis key prefix (default rsocket)")
    worker.add_argument("--stream", default="rsocket:{tenant}",
                        help="stream name, {tenant} replaced (default rsocket:{tenant})")
    worker.add_argument("--no-sink", action="store_true", help="do not append to streams")
    worker.add_argument("--maxlen", type=_positive(int), default=100_000,
                        help="approximate cap of each stream (default 100000)")
    worker.add_argument("--backoff", default="1,2,5,10,20,30",
                        help="reconnect delays in seconds (default 1,2,5,10,20,30)")
    worker.add_argument("--keepalive", type=_positive(float), default=30.0,
                        help="keepalive interval in seconds (default 30)")
    worker.add_argument("--bridges", default=None, metavar="PREFIX", nargs="?",
                        const="rsocket:bridge",
                        help="the tenants are served by a fleet of bridges sharing this "
                             "Redis: find each one's bridge under this key prefix (default "
                             "rsocket:bridge) before every connect")

    serve = commands.add_parser(
        "serve", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run the reference server",
        description="Run the reference server (rsocket.v1) until SIGINT/SIGTERM.",
        epilog="examples:\n  rsocket serve --port 8765 --tenants 3 --rate 100\n"
               "  rsocket serve --token secret        # t1..t3, each with token 'secret'\n"
               "  rsocket serve --tenants-file tenants.json",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any)")
    serve.add_argument("--tenants", type=_positive(int), default=3,
                       help="tenants t1..tN (default 3)")
    serve.add_argument("--token", default=None,
                       help="the token of every tenant t1..tN (default: random ones, printed)")
    serve.add_argument("--tenants-file", default=None, metavar="FILE",
                       help='tenants and tokens from a JSON file {"tenants": {"t1": "token1"}} '
                            "(the worker's format; its url is ignored)")
    serve.add_argument("--rate", type=_non_negative, default=0.0,
                       help="events/s per tenant of the standard mix (default 0: off)")
    serve.add_argument("--replay-window", type=_positive(int), default=100_000,
                       help="events kept per tenant for resuming clients (default 100000)")

    bench = commands.add_parser(
        "bench", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="quick benchmarks: buffer cores and socket throughput",
        description="Time both buffer cores on the standard workload and the socket over "
                    "loopback; prints tables of ratios measured in this run.",
        epilog="example:\n  rsocket bench --events 20000",
    )
    bench.add_argument("--events", type=_positive(int), default=20_000,
                       help="events of the standard mix per run (default 20000)")
    bench.add_argument("--rounds", type=_positive(int), default=3, help="rounds (default 3)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rsocket`` console script and ``python -m rsocket``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo" and args.bridges is not None and not (args.bridge and args.workers):
        parser.error("--bridges needs --bridge and --workers")
    if args.command == "demo" and args.bridge and args.workers is not None and args.bridges is None:
        parser.error("--bridge with --workers needs --bridges M (bridges sharing the accounts)")
    live = args.command == "demo" and not args.json and sys.stderr.isatty()
    level = args.log_level or ("ERROR" if args.command == "demo" else "WARNING")
    try:
        logformat.configure(args.log_format, level)
    except ValueError as exc:
        print(f"rsocket: error: {exc}", file=sys.stderr)
        return 2
    if args.metrics_port is not None and _serve_metrics(args.metrics_port) is None:
        return 2
    try:
        if args.command == "demo":
            if args.workers is not None:
                return _cluster_demo(args, live)
            return _demo(args, live)
        if args.command == "worker":
            return _worker(args)
        if args.command == "serve":
            return _serve(args)
        return _bench(args)
    except KeyboardInterrupt:
        return 130


def _serve_metrics(port: int) -> tuple[object, object] | None:
    """Serve Prometheus metrics on loopback; returns (server, thread), None without the extra."""
    try:
        import prometheus_client
    except ImportError:
        print("rsocket: error: --metrics-port needs prometheus-client "
              "(pip install 'rsocket-events[metrics]')", file=sys.stderr)
        return None
    from .. import metrics

    metrics.get()  # created before the first scrape
    served = prometheus_client.start_http_server(port, addr="127.0.0.1")
    logging.getLogger("rsocket").warning("metrics on http://127.0.0.1:%d/metrics", port)
    return served


def _demo(args: argparse.Namespace, live: bool) -> int:
    from ..testing.bridge import BridgeUnavailable
    from .demo import DemoConfig, print_summary, run_demo

    config = DemoConfig(duration=_or(args.duration, 50.0), tenants=_or(args.tenants, 5),
                        rate=_or(args.rate, 200.0), faults_per_min=args.faults_per_min,
                        drop_share=0.3 if args.faults == "mixed" else 0.0,
                        seed=args.seed, live=live, bridge=args.bridge,
                        handler_faults=args.handler_faults)
    try:
        summary = run(run_demo(config))
    except BridgeUnavailable as exc:
        print(f"rsocket demo --bridge: {exc}", file=sys.stderr)
        return 2
    print_summary(summary, as_json=args.json)
    return 0 if summary.passed else 1


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def _cluster_demo(args: argparse.Namespace, live: bool) -> int:
    from .cluster_demo import ClusterDemoConfig, DemoError, print_summary, run_cluster_demo
    from .redis_local import RedisUnavailable

    config = ClusterDemoConfig(
        workers=args.workers, tenants=_or(args.tenants, 30), duration=_or(args.duration, 20.0),
        rate=_or(args.rate, 50.0), ttl=args.ttl, redis=args.redis, seed=args.seed,
        log_level=args.log_level or "WARNING", bridges=args.bridges or 0,
    )
    try:
        summary = run(run_cluster_demo(config, progress=None if args.json else sys.stderr))
    except (DemoError, RedisUnavailable, ImportError) as exc:
        print(f"rsocket: error: {exc}", file=sys.stderr)
        return 2
    print_summary(summary, as_json=args.json)
    return 0 if summary.passed else 1


def _worker(args: argparse.Namespace) -> int:
    import json

    from ..socket import SocketConfig

    try:
        from .._redis import redis_asyncio
        from .worker import load_tenants, run_worker

        redis_asyncio()  # ImportError naming the extra without it
        tenants = load_tenants(args.tenants)
        backoff = tuple(float(x) for x in args.backoff.split(",") if x.strip())
        if not backoff or any(d < 0 for d in backoff):
            raise ValueError(f"--backoff: expected delays >= 0, got {args.backoff!r}")
        config = SocketConfig(keepalive_interval=args.keepalive,
                              close_timeout=min(2.0, args.ttl / 4),
                              drain_timeout=min(5.0, args.ttl / 2))
    except (ImportError, ValueError) as exc:
        print(f"rsocket: error: {exc}", file=sys.stderr)
        return 2
    counters = run(run_worker(
        args.redis, tenants, capacity=args.capacity, ttl=args.ttl, worker_id=args.worker_id,
        prefix=args.prefix, stream=None if args.no_sink else args.stream, maxlen=args.maxlen,
        backoff=backoff, socket_config=config, bridges_prefix=args.bridges,
    ))
    print(json.dumps(counters), flush=True)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import errno
    import secrets

    from .serve import serve
    from .worker import load_tenants

    if args.tenants_file is not None:
        try:
            tenants = {name: token for name, _, token in load_tenants(args.tenants_file,
                                                                       url_required=False)}
        except ValueError as exc:
            print(f"rsocket: error: {exc}", file=sys.stderr)
            return 2
    else:
        tenants = {f"t{i}": args.token or secrets.token_urlsafe(12)
                   for i in range(1, args.tenants + 1)}
    try:
        run(serve(args.host, args.port, tenants, args.rate, args.replay_window))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"rsocket: error: port {args.port} on {args.host} is already in use "
                  "(another server running? pick one with --port)", file=sys.stderr)
            return 2
        raise
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args.events, args.rounds)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
