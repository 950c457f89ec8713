"""`python -m bench` — the benchmark's command line.

    python -m bench [--smoke] [--duration S] [--rounds N] [--configs a,b,…] [--no-peers]
                    [--profile S] [--extproc-workers N] [--results DIR]
    python -m bench controlplane [--smoke] [--seed N] [--duration S] [--events N] …
    python -m bench soak [--smoke] [--minutes M] [--window S] [--connections N]

The first form is the data-plane benchmark (bench/dataplane.py), the second the control-plane
one (bench/controlplane.py), the third the memory soak (bench/soak.py). Each writes
`<kind>-<timestamp>.json` and `.md` under `--results` (default bench/results/, gitignored),
prints the Markdown, and exits 0 for a valid run, 1 for an invalid one (any non-2xx response or
socket error), 2 when something could not start.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench import report
from bench.dataplane import (
    ALL_CONFIGS,
    FULL_CELLS,
    SMOKE_CONFIGS,
    DataPlaneSettings,
    log,
    run_dataplane,
)
from bench.gateway import Backends
from bench.peers import PEERS
from bench.procs import BenchError
from bench.wrk import WrkMissing, wrk_path

RESULTS = Path(__file__).resolve().with_name("results")
BENCH_REDIS_DB = 15
DEFAULT_DATABASE = "aigw_bench"


def default_postgres() -> str:
    """`$DATABASE_URL`'s server (its own database is only used to connect), else local."""
    return os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"


def default_redis() -> str:
    """`$REDIS_URL`'s server, database 15 (the test suite uses 1-14), else local."""
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    return urlunsplit(urlsplit(url)._replace(path=f"/{BENCH_REDIS_DB}"))


def backend_arguments(parser: argparse.ArgumentParser, database: str) -> None:
    parser.add_argument(
        "--postgres",
        default=default_postgres(),
        metavar="URL",
        help="PostgreSQL server to create the bench database on",
    )
    parser.add_argument(
        "--database",
        default=database,
        help="the bench's own database (dropped and created at the start, dropped at the end)",
    )
    parser.add_argument(
        "--redis-url",
        default=default_redis(),
        metavar="URL",
        help="Redis URL with its database number (flushed!)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, metavar="DIR")


def dataplane_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="~15 s of load: envoy, floor and gateway, 1 s per cell, 1 round, no peers",
    )
    parser.add_argument("--duration", type=int, default=10, metavar="S", help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--configs",
        default=",".join(ALL_CONFIGS),
        help=f"comma-separated, of {', '.join(ALL_CONFIGS)}",
    )
    parser.add_argument("--no-peers", action="store_true", help="without litellm and portkey")
    parser.add_argument("--chunks", type=int, default=50, help="content chunks per stream")
    parser.add_argument(
        "--interval-ms", type=float, default=5.0, help="pause between chunks of the paced streams"
    )
    parser.add_argument("--extproc-workers", type=int, default=1)
    parser.add_argument("--litellm-workers", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2, metavar="S")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="S",
        help="after the rounds, py-spy the extproc for S s per mode",
    )
    parser.add_argument(
        "--max-interference",
        type=float,
        default=0.25,
        metavar="CORES",
        help="run a cell again when other programs kept more CPU than this busy",
    )
    parser.add_argument("--retries", type=int, default=2, help="at most, per cell")
    backend_arguments(parser, DEFAULT_DATABASE)
    return parser


def dataplane_settings(args: argparse.Namespace, work: Path) -> DataPlaneSettings:
    backends = Backends(args.postgres, args.database, args.redis_url)
    if args.smoke:
        return DataPlaneSettings(
            backends=backends,
            work=work,
            duration_s=1,
            rounds=1,
            cells=FULL_CELLS[:2] + FULL_CELLS[3:],  # json-c32, json-c1, stream-c32, paced-c4
            configs=SMOKE_CONFIGS,
            chunks=args.chunks,
            interval_ms=args.interval_ms,
            extproc_workers=args.extproc_workers,
            warmup_s=0,
            retries=0,
            smoke=True,
        )
    configs = tuple(c.strip() for c in args.configs.split(",") if c.strip())
    unknown = set(configs) - set(ALL_CONFIGS)
    if unknown:
        raise SystemExit(f"unknown configuration(s): {', '.join(sorted(unknown))}")
    if args.no_peers:
        configs = tuple(c for c in configs if c not in PEERS)
    return DataPlaneSettings(
        backends=backends,
        work=work,
        duration_s=args.duration,
        rounds=args.rounds,
        configs=configs,
        chunks=args.chunks,
        interval_ms=args.interval_ms,
        extproc_workers=args.extproc_workers,
        litellm_workers=args.litellm_workers,
        warmup_s=args.warmup,
        profile_s=args.profile,
        max_interference=args.max_interference,
        retries=args.retries,
    )


def finish(result: dict[str, Any], results: Path, stem: str, text: str | None = None) -> int:
    """Write the JSON and the Markdown (`text`, else the data-plane report), print the Markdown
    and where both are; the exit code."""
    if text is None:
        json_path, md_path = report.write(result, results, stem)
    else:
        json_path, md_path = report.write_files(result, text, results, stem)
    print(md_path.read_text())
    log(f"results: {json_path} and {md_path}")
    return 0 if result["valid"] else 1


def main_dataplane(argv: list[str]) -> int:
    args = dataplane_parser().parse_args(argv)
    stem = f"dataplane-{time.strftime('%Y%m%d-%H%M%S')}" + ("-smoke" if args.smoke else "")
    settings = dataplane_settings(args, args.results / f"{stem}-work")
    try:
        wrk_path()
        result = run_dataplane(settings)
    except (WrkMissing, BenchError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    result["summary"] = report.summarize(result)
    result["ratios"] = report.ratios(result["summary"])
    invalid = [
        f"{c['config']} {c['cell']} round {c['round']}: non-2xx {c.get('non_2xx', c.get('errors'))}"
        f", socket errors {c.get('socket_errors', {})}"
        for c in result["cells"]
        if not c["valid"]
    ]
    result["invalid"] = invalid
    result["valid"] = not invalid
    return finish(result, args.results, stem)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["controlplane"]:
        from bench.controlplane import main_controlplane

        return main_controlplane(argv[1:])
    if argv[:1] == ["soak"]:
        from bench.soak import main_soak

        return main_soak(argv[1:])
    return main_dataplane(argv)


if __name__ == "__main__":
    sys.exit(main())
