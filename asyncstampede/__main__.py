"""``asyncstampede doctor [URL]`` (also ``python -m asyncstampede doctor``): judge a Redis.

Reads, never writes. Prints a table for a person, or with ``--json`` every
figure and verdict for a machine. Exit status: 0 healthy, 1 warnings, 2
critical, 3 when it cannot judge (Redis unreachable, ``INFO`` refused, bad
arguments), 130 when interrupted: fit for a health check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
from typing import NoReturn
from urllib.parse import urlsplit

import anyio
from redis.asyncio import Redis

from ._doctor import Diagnosis, diagnose
from ._exceptions import BackendError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Exit 3 on bad arguments: 2 means critical."""
        self.print_usage(sys.stderr)
        self.exit(3, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _Parser(prog="asyncstampede", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    doctor = commands.add_parser("doctor", help="tell why a Redis stampedes, and what to change")
    doctor.add_argument("url", nargs="?", default="redis://127.0.0.1:6379/0")
    doctor.add_argument(
        "--interval", type=float, default=3.0, help="seconds between the two readings"
    )
    doctor.add_argument("--json", action="store_true", help="every figure and verdict, as JSON")
    doctor.add_argument(
        "--sample", type=int, default=1000, help="keys to look at (a bounded SCAN); 0: none"
    )
    doctor.add_argument("--namespace", help="look at this namespace's keys only")
    doctor.add_argument(
        "--watch", action="store_true", help="read again and again until interrupted (Ctrl-C)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.interval <= 3600:  # (NaN fails this too)
        doctor.error("--interval must be a number of seconds from 0 to 3600")
    if args.sample < 0:
        doctor.error("--sample must be at least 0")
    parts = urlsplit(args.url)
    database = parts.path.strip("/")
    if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
        # (redis-py would read database 0 without a word)
        doctor.error(
            f"the URL's path names the database by number (redis://host:port/0), not {parts.path!r}"
        )
    if args.namespace is not None:
        try:
            args.namespace.encode()
        except UnicodeEncodeError:
            doctor.error("--namespace must be UTF-8 text (asyncstampede's namespaces are)")
    colour = not args.json and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    status = 0
    try:
        while True:
            try:
                found = anyio.run(_diagnose, args.url, args.interval, args.sample, args.namespace)
            except (BackendError, ValueError) as exc:  # (ValueError: a URL redis-py cannot read)
                print(f"asyncstampede doctor: {exc}", file=sys.stderr)
                if isinstance(exc, BackendError):
                    print(
                        "asyncstampede doctor: is the server up, and is this its URL? Give it "
                        "as redis://[user:password@]host:port/db (default "
                        "redis://127.0.0.1:6379/0).",
                        file=sys.stderr,
                    )
                status = 3
            else:
                print(json.dumps(found.as_dict(), indent=2) if args.json else _table(found, colour))
                status = found.exit_status
            if not args.watch:
                return status
            print(flush=True)
            time.sleep(max(args.interval, 1.0))  # like watch -n: one reading a second at most
    except KeyboardInterrupt:
        return 130


async def _diagnose(url: str, interval: float, sample: int, namespace: str | None) -> Diagnosis:
    client = Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        return await diagnose(client, interval=interval, sample=sample, namespace=namespace)
    finally:
        await client.aclose()


_COLOURS = {"info": "\033[36m", "warning": "\033[33m", "critical": "\033[31;1m"}


def _table(found: Diagnosis, colour: bool = False, width: int | None = None) -> str:
    """Render *found* for a person: figures, then verdicts, wrapped to *width* columns."""
    width = width or min(shutil.get_terminal_size().columns, 100)
    f = found.figures
    share = f.get("memory_share")
    traffic = (
        f"  traffic  {f['ops_per_s']:,} ops/s, hits {f['hits_per_s']:.1f}/s, "
        f"misses {f['misses_per_s']:.1f}/s, evicted {f['evicted_keys_per_s']:.1f}/s, "
        f"expired {f['expired_keys_per_s']:.1f}/s"
        if found.interval > 0
        else f"  traffic  {f['ops_per_s']:,} ops/s; no rates or traffic verdicts (--interval 0)"
    )
    lines = [
        f"Redis at {found.address} ({found.version}), read {found.interval:g} s apart",
        f"  memory   {f['used_memory']:,} bytes used"
        + (f", {share:.0%} of maxmemory {f['maxmemory']:,}" if share is not None else "")
        + f", policy {f['maxmemory_policy']}",
        f"  keys     {f['keys']:,} ({f['keys_without_ttl']:,} without a TTL)",
        traffic,
        f"  clients  {f['connected_clients']} connected"
        + (f" of maxclients {f['maxclients']:,}" if f.get("maxclients") else "")
        + f", {f['blocked_clients']} blocked",
    ]
    sample = f.get("sample")
    if sample and not sample["sampled"]:
        lines.append("  sample   no keys to look at")
    elif sample:
        lines.append(
            f"  sample   {sample['sampled']} key{'' if sample['sampled'] == 1 else 's'}: "
            f"{sample.get('without_ttl', 0)} without a "
            f"TTL, sizes p50 {sample.get('size_p50', 0):,} / max {sample.get('size_max', 0):,} "
            "bytes"
        )
    # The figures wrap under their own column.
    lines = [
        wrapped
        for line in lines
        for wrapped in textwrap.wrap(line, width, subsequent_indent=" " * 11, drop_whitespace=True)
    ]
    lines.append("")
    if not found.verdicts:
        lines.append("ok: nothing to change")
    for verdict in found.verdicts:
        word = f"{verdict.severity.upper():8}"
        if colour:
            word = f"{_COLOURS.get(verdict.severity, '')}{word}\033[0m"
        title = textwrap.wrap(f"{verdict.code}: {verdict.title}", width - 9)
        lines.append(f"{word} {title[0]}")
        lines.extend(f"{' ' * 9}{more}" for more in title[1:])
        lines.extend(
            textwrap.wrap(verdict.advice, width, initial_indent=" " * 9, subsequent_indent=" " * 9)
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
