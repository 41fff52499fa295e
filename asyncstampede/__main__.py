"""``asyncstampede doctor [URL]`` (also ``python -m asyncstampede doctor``): judge a Redis.

Reads, never writes. Prints a table for a person, or with ``--json`` every
figure and verdict for a machine. Exit status: 0 healthy, 1 warnings, 2
critical, 3 when it cannot judge (Redis unreachable, ``INFO`` refused, bad
arguments), 130 when interrupted: fit for a health check.

On a node of a Redis Cluster (``--cluster``, or found by its ``INFO``), every
primary is judged at once, each in a section of its own, then the cluster
as a whole; the exit status is the worst of them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import textwrap
import time
from typing import Any, NoReturn
from urllib.parse import urlsplit

import anyio
from redis.asyncio import ConnectionPool, Redis

from ._backends.redis.sentinel import close_owned, is_sentinel_url, sentinel_client_from_url
from ._backends.redis.wire import quiet_handshake
from ._doctor import (
    ClusterDiagnosis,
    ClusterNode,
    Diagnosis,
    Verdict,
    check_interval,
    diagnose,
    diagnose_cluster,
    is_cluster,
)
from ._exceptions import BackendError, BackendRefusedError
from ._keys import validate_namespace

__all__ = ["main"]


_DESCRIPTION = (
    "Tell why a Redis stampedes, and what to change. Reads, never writes. On a Redis "
    "Cluster, every primary and the cluster. Exit status: 0 healthy, 1 warnings, 2 "
    "critical, 3 cannot judge (Redis unreachable, INFO refused, bad arguments), 130 "
    "interrupted."
)


class _Parser(argparse.ArgumentParser):
    json_errors = False  # --json was asked for: errors are JSON on stdout too

    def error(self, message: str) -> NoReturn:
        """Exit 3 on bad arguments: 2 means critical."""
        if _Parser.json_errors:
            _say(json.dumps({"error": message, "exit_status": 3}))
        self.print_usage(sys.stderr)
        self.exit(3, f"{self.prog}: error: {message}\n")


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C: leave now, with 130 (nothing to clean up: the doctor only reads).

    Leaving from the handler, not by cancelling the run: a redis-py command
    in progress may swallow a cancellation and carry on.
    """
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stdout.flush()
    os._exit(130)


def _say(text: str) -> None:
    """Print *text* on stdout, if there is one (a closed one is no error of the doctor's)."""
    if sys.stdout is not None:
        print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    arguments = sys.argv[1:] if argv is None else argv
    _Parser.json_errors = "--json" in arguments
    for stream in (sys.stdout, sys.stderr):  # (key names in an ASCII-only locale)
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    parser = _Parser(prog="asyncstampede", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    doctor = commands.add_parser("doctor", help="tell why a Redis stampedes, and what to change")
    doctor.add_argument(
        "url",
        nargs="?",
        default=os.environ.get("REDIS_URL") or _DEFAULT_URL,
        help=f"the Redis (default: $REDIS_URL, else {_DEFAULT_URL}); a password in "
        "$REDIS_URL stays out of the process list",
    )
    doctor.add_argument(
        "--interval",
        type=float,
        default=3.0,
        help="seconds between the first and last readings (0: no rates; else 0.1 to 3600)",
    )
    doctor.add_argument("--json", action="store_true", help="every figure and verdict, as JSON")
    doctor.add_argument(
        "--sample", type=int, default=1000, help="keys to look at (a bounded SCAN); 0: none"
    )
    doctor.add_argument(
        "--namespace", help="a Stampede's namespace: sample its keys only, probe its wake rules"
    )
    doctor.add_argument(
        "--watch", action="store_true", help="read again and again until interrupted (Ctrl-C)"
    )
    doctor.add_argument(
        "--no-wake",
        action="store_true",
        help="skip the wake probe (its verdict is for the URL's user: skip it for a "
        "monitoring user that is not the application's)",
    )
    doctor.add_argument(
        "--cluster",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the URL names a node of a Redis Cluster: judge every primary and the cluster "
        "(the default when the server says cluster_enabled:1); --no-cluster: this node only",
    )
    args = parser.parse_args(arguments)
    refused = _refusal(args)
    if refused:
        doctor.error(refused)
    colour = (
        not args.json
        and sys.stdout is not None
        and sys.stdout.isatty()
        and not os.environ.get("NO_COLOR")
    )
    if argv is None:  # (the command line, not a caller's test)
        signal.signal(signal.SIGINT, _interrupted)
    try:
        return _run(args, colour)
    except KeyboardInterrupt:
        return 130
    except OSError:  # (| head: the reader has gone; or a full disk: the status stands)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _last_status


_DEFAULT_URL = "redis://127.0.0.1:6379/0"
_last_status = 0


def _refusal(args: argparse.Namespace) -> str | None:
    """Say what is wrong with the arguments, if anything (the parser's checks aside)."""
    try:
        check_interval(args.interval)
    except ValueError as exc:
        return f"--{exc}"
    if args.sample < 0:
        return "--sample must be at least 0"
    try:
        parts = urlsplit(args.url)
    except ValueError as exc:  # (an IPv6 address without its bracket, say)
        return f"the URL cannot be read: {exc}"
    if is_sentinel_url(args.url) and args.cluster is True:
        return (
            "--cluster takes the URL of a node of the cluster (redis:// or rediss://): "
            "a redis+sentinel:// URL names one primary, which the doctor judges without --cluster"
        )
    database = parts.path.strip("/")
    if (
        parts.scheme in ("redis", "rediss")
        and database
        and not (database.isascii() and database.isdigit())
    ):
        # (redis-py would read database 0 without a word)
        return (
            f"the URL's path names the database by number (redis://host:port/0), not {parts.path!r}"
        )
    if args.namespace is not None:
        try:
            args.namespace.encode()  # (an undecodable byte of argv)
            validate_namespace(args.namespace)
        except UnicodeEncodeError:
            return "--namespace must be UTF-8 text (asyncstampede's namespaces are)"
        except ValueError as exc:
            return f"--{exc}"
    return None


def _run(args: argparse.Namespace, colour: bool) -> int:
    global _last_status  # (what a broken pipe returns)
    while True:
        try:
            found, detected = anyio.run(
                _diagnose,
                args.url,
                args.interval,
                args.sample,
                args.namespace,
                not args.no_wake,
                args.cluster,
            )
        except (BackendError, ValueError) as exc:  # (ValueError: a URL redis-py cannot read)
            status, words = _cannot(exc)
            _last_status = status
            if args.json:
                _say(json.dumps({"error": str(exc), "exit_status": status}))
            if sys.stderr is not None:
                print(f"asyncstampede doctor: {exc}", file=sys.stderr)
                if words:
                    print(f"asyncstampede doctor: {words}", file=sys.stderr)
        else:
            status = _last_status = found.exit_status
            if args.json:  # one document; one line per run under --watch (JSON Lines)
                _say(json.dumps(found.as_dict(), indent=None if args.watch else 2))
            elif isinstance(found, ClusterDiagnosis):
                _say(_cluster_table(found, colour, detected=detected))
            else:
                _say(_table(found, colour))
        _last_status = status
        if not args.watch:
            return status
        if not args.json:
            _say("")
        time.sleep(max(args.interval, 1.0))  # like watch -n: one reading a second at most


def _cannot(exc: Exception) -> tuple[int, str | None]:
    """Return the exit status of a run that could not judge, and what to tell the person."""
    text = str(exc)
    if "max number of clients" in text:
        return 2, (
            "the server refused the doctor's connection: it is at maxclients, so every new "
            "connection is refused (critical); raise maxclients (CONFIG SET maxclients <n>)"
        )
    if isinstance(exc, BackendRefusedError) or not isinstance(exc, BackendError):
        return 3, None  # (its words say what to change)
    return 3, (
        "is the server up, and is this its URL? Give it as redis://[user:password@]host:port/db "
        f"(default $REDIS_URL, else {_DEFAULT_URL})."
    )


async def _diagnose(
    url: str,
    interval: float,
    sample: int,
    namespace: str | None,
    wake: bool,
    cluster: bool | None,
) -> tuple[Diagnosis | ClusterDiagnosis, bool]:
    """Judge the server at *url*, or its whole cluster; say whether a cluster was found unasked.

    *cluster*: True, the server is a Redis Cluster node (else it cannot be
    judged); False, judge this node only; None, ask the server. A
    ``redis+sentinel://`` URL judges the primary its sentinels name.
    """
    # (No handshake the server would refuse: an error the doctor caused would be
    # counted in the very errorstats a health check watches. See quiet_handshake.)
    client = (
        sentinel_client_from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
        if is_sentinel_url(url)  # (the primary its sentinels name)
        else Redis.from_url(
            url,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
            **quiet_handshake(ConnectionPool),
        )
    )
    try:
        detected = False
        if cluster is None:
            cluster = detected = await is_cluster(client)
        if cluster:  # (its primaries are read on connections of their own: this one goes)
            await client.connection_pool.disconnect()
            found: Diagnosis | ClusterDiagnosis = await diagnose_cluster(
                client, interval=interval, sample=sample, namespace=namespace, wake=wake
            )
        else:
            found = await diagnose(
                client, interval=interval, sample=sample, namespace=namespace, wake=wake
            )
        return found, detected
    finally:
        await client.aclose()
        await close_owned(client)


_COLOURS = {"info": "\033[36m", "warning": "\033[33m", "critical": "\033[31;1m"}


def _table(found: Diagnosis, colour: bool = False, width: int | None = None) -> str:
    """Render *found* for a person: figures, then verdicts, wrapped to *width* columns."""
    width = _width(width)
    lines = _wrapped(
        [
            f"Redis at {found.address} ({found.version}), read over {abs(found.interval):g} s",
            *_figure_lines(found),
        ],
        width,
    )
    lines.append("")
    if not found.verdicts:
        lines.append("ok: nothing to change")
    lines.extend(_verdict_lines(found.verdicts, colour, width))
    return "\n".join(lines)


def _width(width: int | None) -> int:
    return max(width or min(shutil.get_terminal_size().columns, 100), 40)  # (40 at least)


def _wrapped(lines: list[str], width: int) -> list[str]:
    """Wrap figure lines under their own column; commands are never cut at a hyphen."""
    return [
        wrapped
        for line in lines
        for wrapped in textwrap.wrap(
            line, width, subsequent_indent=" " * 11, break_on_hyphens=False
        )
    ]


def _heading(line: str, width: int) -> list[str]:
    """Wrap a section's heading (its continuation indented less than a figure's)."""
    return textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False)


def _figure_lines(found: Diagnosis) -> list[str]:
    """One server's figures: memory, keys, traffic, clients and the key sample."""
    f = found.figures
    share = f.get("memory_share")
    if f.get("restarted"):
        traffic = "no rates: the server restarted (or its statistics were reset) meanwhile"
    elif not f.get("rates"):
        traffic = "no rates or traffic verdicts (--interval 0)"
    else:
        # (Redis counts no command it refused in its ops: writes refused with OOM
        # are said beside ops/s, as not in it, not as if they were.)
        refused = f.get("oom_errors")
        traffic = (
            f"{f['ops_per_s']:,.0f} ops/s (first half {f['ops_per_s_first_half']:,.0f}, "
            f"second {f['ops_per_s_second_half']:,.0f})"
            + (f", not counting {refused:,} writes refused (OOM)" if refused else "")
            + f", hits {f['hits_per_s']:,.1f}/s, misses {f['misses_per_s']:,.1f}/s, evicted "
            f"{f['evicted_keys_per_s']:,.1f}/s, expired {f['expired_keys_per_s']:,.1f}/s"
        )
    lines = [
        f"  memory   {f['used_memory']:,} bytes used"
        + (f", {share:.0%} of maxmemory {f['maxmemory']:,}" if share is not None else "")
        + f", policy {f['maxmemory_policy']}",
        f"  keys     {f['keys']:,} ({f['keys_without_ttl']:,} without a TTL)",
        f"  traffic  {traffic}",
        f"  clients  {f['connected_clients']:,} connected (the doctor included)"
        + (f" of maxclients {f['maxclients']:,}" if f.get("maxclients") else "")
        + f", {f['blocked_clients']:,} blocked",
    ]
    sample = f.get("sample")
    if sample:
        lines.append(f"  sample   {_sample_line(sample)}")
    return lines


def _verdict_lines(verdicts: list[Verdict], colour: bool, width: int) -> list[str]:
    """One verdict a paragraph: its severity and title, then its advice, indented."""
    lines: list[str] = []
    for verdict in verdicts:
        word = f"{verdict.severity.upper():8}"
        if colour:
            word = f"{_COLOURS.get(verdict.severity, '')}{word}\033[0m"
        title = textwrap.wrap(f"{verdict.code}: {verdict.title}", width - 9, break_on_hyphens=False)
        lines.append(f"{word} {title[0]}")
        lines.extend(f"{' ' * 9}{more}" for more in title[1:])
        lines.extend(
            textwrap.wrap(
                verdict.advice,
                width,
                initial_indent=" " * 9,
                subsequent_indent=" " * 9,
                break_on_hyphens=False,
            )
        )
    return lines


def _cluster_table(
    found: ClusterDiagnosis,
    colour: bool = False,
    width: int | None = None,
    *,
    detected: bool = False,
) -> str:
    """Render a Redis Cluster's diagnosis: the cluster, a section per primary, its verdicts."""
    width = _width(width)
    t = found.topology
    unserved = [
        f"{count:,} {words}"
        for count, words in (
            (t["slots_unassigned"], "assigned to no node"),
            (t["slots_failed"], "on failed primaries"),
            (t["slots_unreachable"], "on primaries not reached"),
        )
        if count
    ]
    replicas = [r for node in found.nodes for r in node.replicas]
    settings = [
        f"{name} {_setting(t[key])}"
        for key, name in (
            ("require_full_coverage", "cluster-require-full-coverage"),
            ("node_timeout_ms", "cluster-node-timeout"),
            ("allow_reads_when_down", "cluster-allow-reads-when-down"),
        )
        if t.get(key) is not None
    ]
    count = len(found.nodes)
    known = "?" if t["known_nodes"] is None else f"{t['known_nodes']:,}"
    head = [
        f"Redis Cluster at {found.address}"
        + (" (found by its INFO: cluster_enabled:1)" if detected else "")
        + f", {count:,} primar{'y' if count == 1 else 'ies'} read over {abs(found.interval):g} s",
        f"  state    {t['state'] or '?'} (says {found.address}); {t['slots_served']:,} of "
        f"16,384 slots served by a primary read here"
        + (f"; {', '.join(unserved)}" if unserved else ""),
        f"  nodes    {known} known; "
        f"{sum(1 for r in replicas if r['online']):,} working replica"
        f"{'' if sum(1 for r in replicas if r['online']) == 1 else 's'} of {len(replicas):,}"
        + (f"; failed: {', '.join(t['failed_nodes'])}" if t["failed_nodes"] else "")
        + f" (topology from {t['source']})",
    ]
    if settings:
        head.append(f"  settings {', '.join(settings)}")
    lines = _heading(head[0], width) + _wrapped(head[1:], width)
    # A verdict every primary shares word for word (the wake probe's, say) is said once.
    read = [node for node in found.nodes if node.diagnosis is not None]
    shared = [
        v
        for v in (read[0].verdicts if len(read) > 1 else [])
        if all(v in node.verdicts for node in read[1:])
    ]
    for node in found.nodes:
        heading, *figures = _node_lines(node)
        if node.diagnosis is not None:
            figures += _figure_lines(node.diagnosis)
        lines.append("")
        lines.extend(_heading(heading, width))
        lines.extend(_wrapped(figures, width))
        own = [v for v in node.verdicts if v not in shared]
        if own:
            lines.append("")
            lines.extend(_verdict_lines(own, colour, width))
    if shared:
        lines.extend(
            ["", "Every primary:" if len(read) == len(found.nodes) else "Every primary read:"]
        )
        lines.extend(_verdict_lines(shared, colour, width))
    lines.extend(["", "The cluster:"])
    lines.extend(_verdict_lines(found.verdicts, colour, width) or ["ok: nothing to change"])
    return "\n".join(lines)


def _setting(value: Any) -> str:
    if isinstance(value, dict):  # (the primaries differ)
        return " / ".join(f"{v} on {a}" for a, v in value.items())
    return f"{value:,} ms" if isinstance(value, int) else str(value)


def _node_lines(node: ClusterNode) -> list[str]:
    """Return a primary's heading (address, version, slots) and its replicas' line."""
    ranges = ", ".join(
        str(first) if first == last else f"{first}-{last}"
        for first, last in node.slots[:_RANGES_SHOWN]
    )
    if len(node.slots) > _RANGES_SHOWN:
        ranges += f" and {len(node.slots) - _RANGES_SHOWN:,} more ranges"
    version = f" ({node.diagnosis.version})" if node.diagnosis is not None else ""
    replicas = (
        ", ".join(f"{r['address']} ({_replica_state(r)})" for r in node.replicas)
        if node.replicas
        else "none (nothing takes over its slots if it fails)"
    )
    return [
        f"Primary {node.address}{version}, slots {ranges} ({node.slot_count:,})",
        f"  replicas {replicas}",
    ]


_RANGES_SHOWN = 4  # slot ranges named in a primary's heading


def _replica_state(replica: dict[str, Any]) -> str:
    """``online``, else the cluster's word for it (``fail``), else its link's (``wait_bgsave``)."""
    if replica["online"]:
        return "online"
    if replica["health"] not in (None, "online"):
        return str(replica["health"])
    return str(replica["link"] or "down")


def _sample_line(sample: dict[str, Any]) -> str:
    if sample.get("refused"):
        return f"refused: {sample['refused']}"
    sampled, gone = sample["sampled"], sample.get("gone", 0)
    cut = (
        "" if sample.get("complete", True) else f", stopped after about {sample['scanned']:,} keys"
    )
    # Keys SCAN found that were gone (evicted, expired) by the time they were read.
    went = f"{gone:,} more gone before they were read (evicted or expired)" if gone else ""
    if not sampled:
        if gone:
            return (
                f"no keys left{cut}: the {gone:,} found were gone before they were read "
                "(evicted or expired)"
            )
        return "no keys matched" + cut
    return (
        f"{sampled:,} key{'' if sampled == 1 else 's'}{cut}{f' ({went})' if went else ''}: "
        f"{sample.get('without_ttl', 0):,} without a TTL, sizes in memory p50 "
        f"{sample.get('size_p50', 0):,} / max {sample.get('size_max', 0):,} bytes"
    )


if __name__ == "__main__":
    sys.exit(main())
