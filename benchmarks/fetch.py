"""fetch: ``mailvault fetch`` side by side with mpop, fetchmail and getmail6.

One private Dovecot is loaded with a seeded, generated mailbox (default 10,000 messages,
median ~15 KB, log-normal sizes with a tail of attachments up to 2 MB).  Every tool then
downloads the whole mailbox into a fresh local store of its own, in keep mode (the mailbox
is never changed), under three conditions:

* ``loopback``: straight to Dovecot's plain POP3 port;
* ``loopback, TLS``: Dovecot's POP3S port (mailvault, mpop and the drain only);
* ``20 ms RTT``: through :class:`mailvault.testkit.proxy.DelayProxy`, 10 ms each way.

Next to them runs the bare pipelined drain (:mod:`benchmarks._drain`), the physical limit of
this Dovecot on this link.  Each tool is a fresh process, measured under GNU time: wall
time, peak RSS, CPU time; every run is checked to have stored all messages.

The lock-step peers (fetchmail, getmail6) pay one or two round trips per message, so at
20 ms RTT they would take 6-8 minutes each for 10,000 messages; there they fetch a second
mailbox holding the first ``--rtt-lockstep-count`` (default 1,000) of the same messages.
Their rate is per message and RTT-bound, so the subset gives the same msg/s; the table
says which rows used it.
"""

from __future__ import annotations

import getpass
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

from benchmarks._common import (
    Measurement,
    Options,
    Section,
    Verdict,
    flush_disks,
    fmt_int,
    fmt_ratio,
    machine_description,
    markdown_table,
    remove_tree,
    run_measured,
    scratch_filesystem,
    text_table,
    tool_version,
    verdict_lines,
    verdict_table,
)
from mailvault.testkit.dovecot import Dovecot, dovecot_binary
from mailvault.testkit.generator import generate
from mailvault.testkit.proxy import DelayProxy

ROOT = Path(__file__).resolve().parent.parent
NAME = "fetch"
TITLE = "Fetch: mailvault vs mpop, fetchmail, getmail6"

USER = "bench"
SUBSET_USER = "bench-subset"
PASSWORD = "bench-pw-7f3a"
MEDIAN_SIZE = 15_000
MAX_SIZE = 2_000_000
ONE_WAY_DELAY = 0.010  # 20 ms round trip
RUN_TIMEOUT = 1800.0

# Targets from issue 2, as ratios measured in the same run.
TARGET_VS_MPOP = 1.5
TARGET_VS_DRAIN_RTT = 0.80
TARGET_RSS_MB = 150.0


def _supports_no_index() -> bool:
    """Whether this mailvault's fetch parses and indexes by default (and has --no-index)."""
    done = subprocess.run(
        [sys.executable, "-m", "mailvault", "fetch", "--help"], capture_output=True, text=True
    )
    return "--no-index" in done.stdout


NO_INDEX = _supports_no_index()

LOOPBACK, TLS, RTT = "loopback", "loopback, TLS", "20 ms RTT"
FAST_TOOLS = ("drain", "mailvault", "mpop")  # repeated --repeat times, best run reported
LOCKSTEP = ("fetchmail", "getmail6")  # at 20 ms RTT: the first --rtt-lockstep-count messages
LABELS = {
    "drain": "bare pipelined drain",
    "mailvault": "mailvault fetch --no-index" if NO_INDEX else "mailvault fetch",
    "mailvault-nozstd": "mailvault, compression = none",
    "mailvault-index": "mailvault fetch (+ parse, index)",
    "mpop": "mpop",
    "fetchmail": "fetchmail",
    "getmail6": "getmail6",
}
CONDITIONS: dict[str, tuple[str, ...]] = {
    LOOPBACK: (
        "drain",
        "mailvault",
        "mpop",
        "fetchmail",
        "getmail6",
        "mailvault-nozstd",
        *(("mailvault-index",) if NO_INDEX else ()),
    ),
    TLS: ("drain", "mailvault", "mpop"),
    RTT: ("drain", "mailvault", "mpop", "fetchmail", "getmail6"),
}


@dataclass(frozen=True)
class Mailbox:
    """One POP3 user's mailbox in the private Dovecot."""

    user: str
    count: int
    octets: int  # as Dovecot serves them (STAT)


@dataclass(frozen=True)
class Target:
    """Where a tool connects for one condition, and the mailbox it fetches."""

    condition: str
    host: str
    port: int
    ca_file: Path | None  # set: implicit TLS trusting this CA
    mailbox: Mailbox

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @property
    def user(self) -> str:
        return self.mailbox.user


@dataclass
class Invocation:
    """A prepared, not yet started, tool run and how to count what it stored."""

    argv: list[str]
    env: dict[str, str]
    stored: Callable[[Measurement], int]
    cwd: Path | None = None


@dataclass
class Row:
    """All runs of one tool under one condition."""

    condition: str
    tool: str
    mailbox: Mailbox
    subset: bool = False  # fetched the lock-step subset, not the whole mailbox
    runs: list[Measurement] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def best(self) -> Measurement | None:
        good = [m for m in self.runs if m.returncode == 0]
        return min(good, key=lambda m: m.seconds) if good and not self.errors else None

    @property
    def label(self) -> str:
        extra = f" (first {self.mailbox.count:,} msgs)" if self.subset else ""
        return LABELS[self.tool] + extra

    def rate(self) -> float | None:
        best = self.best
        return None if best is None else self.mailbox.count / best.seconds


# -- the tools ---------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, BENCH_PW=PASSWORD, LC_ALL="C.UTF-8")
    env.pop("MAILVAULT_VAULT", None)
    env.update(extra)
    return env


def _maildir(path: Path) -> Path:
    for sub in ("new", "cur", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def _maildir_count(path: Path) -> int:
    return sum(len(os.listdir(path / sub)) for sub in ("new", "cur"))


def _drain(store: Path, target: Target) -> Invocation:
    argv = [sys.executable, "-m", "benchmarks._drain", "--host", target.host]
    argv += ["--port", str(target.port), "--user", target.user]
    if target.ca_file is not None:
        argv += ["--ca", str(target.ca_file)]

    def stored(m: Measurement) -> int:
        return int(json.loads(m.stdout)["messages"])

    return Invocation(argv, _env(), stored, cwd=ROOT)


def _mailvault(
    store: Path, target: Target, compression: str = "zstd", *, index: bool = False
) -> Invocation:
    vault = store / "vault"
    python = [sys.executable, "-m", "mailvault"]
    subprocess.run(
        [*python, "-q", "--vault", str(vault), "init"], check=True, env=_env(), capture_output=True
    )
    config = vault / "mailvault.toml"
    text = config.read_text(encoding="utf-8")
    text = text.replace('compression = "zstd"', f'compression = "{compression}"')
    if f'compression = "{compression}"' not in text:
        text += f'\n[vault]\ncompression = "{compression}"\n'
    text += (
        "\n[accounts.bench]\n"
        f'host = "{target.host}"\n'
        f"port = {target.port}\n"
        f'tls = "{"implicit" if target.tls else "none"}"\n'
        f'user = "{target.user}"\n'
        'password_env = "BENCH_PW"\n'
        'delete = "never"\n'
    )
    text += f'ca_file = "{target.ca_file}"\n' if target.ca_file else "allow_plaintext_auth = true\n"
    config.write_text(text, encoding="utf-8")

    def stored(m: Measurement) -> int:
        report = json.loads(m.stdout)
        (acct,) = report["accounts"]
        if acct["status"] != "ok" or acct["errors"]:
            raise RuntimeError(f"mailvault reported {acct['status']}: {acct['errors']}")
        if report.get("index_error"):
            raise RuntimeError(report["index_error"])
        return int(acct["fetched"])

    argv = [*python, "-q", "--vault", str(vault), "fetch", "--json"]
    if NO_INDEX and not index:
        argv.append("--no-index")
    return Invocation(argv, _env(), stored)


def _mpop(store: Path, target: Target) -> Invocation:
    maildir = _maildir(store / "Maildir")
    argv = ["mpop", f"--host={target.host}", f"--port={target.port}", "--auth=user"]
    argv += [f"--user={target.user}", "--passwordeval=printf '%s\\n' \"$BENCH_PW\""]
    argv += ["--keep=on", "--only-new=off", "--received-header=off", "--pipelining=auto"]
    argv += [f"--delivery=maildir,{maildir}", f"--uidls-file={store / 'uidls'}", "--quiet"]
    if target.ca_file is not None:
        argv += ["--tls=on", "--tls-starttls=off", f"--tls-trust-file={target.ca_file}"]
    else:
        argv += ["--tls=off"]
    return Invocation(argv, _env(), lambda m: _maildir_count(maildir))


def _fetchmail(store: Path, target: Target) -> Invocation:
    # fetchmail hands every message to an MTA or an MDA; the cheapest delivery that still
    # writes every message to disk is a BSMTP file (no process per message).
    bsmtp = store / "out.bsmtp"
    rc = store / "fetchmailrc"
    rc.write_text(
        "set no bouncemail\nset no syslog\n"
        f"poll {target.host} with proto POP3 port {target.port}\n"
        f'  user "{target.user}" there with password "{PASSWORD}" is "{getpass.getuser()}" here\n'
        f"  options keep fetchall no rewrite sslproto '' bsmtp \"{bsmtp}\"\n"
    )
    rc.chmod(0o600)
    argv = ["fetchmail", "--nodetach", "--silent", "-f", str(rc)]
    argv += ["--idfile", str(store / "ids"), "--pidfile", str(store / "pid")]

    def stored(m: Measurement) -> int:
        with open(bsmtp, "rb") as f:
            return f.read().count(b"\r\n.\r\n")

    return Invocation(argv, _env(HOME=str(store), FETCHMAILHOME=str(store)), stored)


def _getmail(store: Path, target: Target) -> Invocation:
    maildir = _maildir(store / "Maildir")
    (store / "getmail").mkdir()
    # getmail refuses to deliver as root; it switches to `user` for the delivery instead.
    # The delivery child must reach the Maildir: every directory above it needs o+x.
    as_user = ""
    if os.geteuid() == 0:
        as_user = "user = nobody\n"
        for path in (maildir, *(maildir / s for s in ("new", "cur", "tmp"))):
            os.chown(path, 65534, 65534)
        for parent in maildir.parents:
            if parent.stat().st_mode & 0o001 == 0:
                parent.chmod(parent.stat().st_mode | 0o005)
    rc = store / "getmailrc"
    rc.write_text(
        "[retriever]\ntype = SimplePOP3Retriever\n"
        f"server = {target.host}\nport = {target.port}\n"
        f"username = {target.user}\npassword = {PASSWORD}\n\n"
        f"[destination]\ntype = Maildir\npath = {maildir}/\n{as_user}\n"
        "[options]\nread_all = true\ndelete = false\nverbose = 0\n"
        "message_log_syslog = false\nreceived = false\ndelivered_to = false\n"
    )
    argv = ["getmail", f"--getmaildir={store / 'getmail'}", f"--rcfile={rc}", "--quiet"]
    return Invocation(argv, _env(), lambda m: _maildir_count(maildir))


TOOLS: dict[str, Callable[[Path, Target], Invocation]] = {
    "drain": _drain,
    "mailvault": _mailvault,
    "mailvault-nozstd": lambda store, target: _mailvault(store, target, "none"),
    "mailvault-index": lambda store, target: _mailvault(store, target, index=True),
    "mpop": _mpop,
    "fetchmail": _fetchmail,
    "getmail6": _getmail,
}


BINARIES = {"mpop": "mpop", "fetchmail": "fetchmail", "getmail6": "getmail"}


def available() -> str | None:
    """Why this benchmark cannot run here, or None (missing peers are only skipped)."""
    if dovecot_binary() is None:
        return "dovecot is not installed (make bench-deps)"
    return None


def missing_tools() -> list[str]:
    return [tool for tool, binary in BINARIES.items() if shutil.which(binary) is None]


# -- running -----------------------------------------------------------------------------------


class _Bench:
    def __init__(self, opts: Options, work: Path) -> None:
        self.opts = opts
        self.work = work
        self.runs = 0
        self.loads: dict[str, float] = {}

    def say(self, text: str) -> None:
        print(text, flush=True)

    def tools_for(self, condition: str) -> list[str]:
        skip = {*self.opts.skip_tools, *missing_tools()}
        chosen = [t for t in CONDITIONS[condition] if t not in skip]
        if self.opts.only_tools:
            chosen = [t for t in chosen if t in self.opts.only_tools]
        return chosen

    def measure(self, row: Row, target: Target) -> None:
        self.runs += 1
        expected = target.mailbox.count
        store = self.work / "runs" / f"{self.runs:03d}-{row.tool}"
        remove_tree(store)
        store.mkdir(parents=True)
        inv = TOOLS[row.tool](store, target)
        flush_disks()
        m = run_measured(
            inv.argv, env=inv.env, cwd=inv.cwd, timeout=RUN_TIMEOUT, log_dir=store / "log"
        )
        row.runs.append(m)
        try:
            stored = inv.stored(m)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            stored = -1
            if m.returncode == 0:
                m.returncode, m.stderr = 1, f"{m.stderr}\n{exc}"
        if m.returncode != 0:
            got = ""
            if stored >= 0:
                got = f"; {stored:,} of {expected:,} messages stored"
                got += f" ({stored / m.seconds:,.0f} msg/s)" if stored else ""
            row.errors.append(f"{m.failure()}{got} after {m.seconds:.0f} s")
        elif stored != expected:
            row.errors.append(f"stored {stored} of {expected} messages")
        state = "ok" if not row.errors else f"FAILED ({row.errors[-1]})"
        self.say(
            f"  [{target.condition}] {row.tool:17} {expected:6,} msgs {m.seconds:8.2f} s "
            f"{expected / m.seconds:9,.0f} msg/s  {m.max_rss_mb:6.1f} MB RSS  "
            f"{m.cpu_seconds:7.2f} s CPU  {m.host_cpu_seconds:5.2f} s here  {state}"
        )
        if not self.opts.keep_workdir:
            remove_tree(store)

    def condition(self, target: Target, lockstep: Target | None = None) -> list[Row]:
        """Every tool of the condition; the lock-step peers on ``lockstep`` if given."""
        tools = self.tools_for(target.condition)
        self.loads[target.condition] = os.getloadavg()[0]
        targets = {
            tool: lockstep if lockstep is not None and tool in LOCKSTEP else target
            for tool in tools
        }
        rows = {
            tool: Row(target.condition, tool, t.mailbox, subset=t is not target)
            for tool, t in targets.items()
        }
        fast = [t for t in tools if t in FAST_TOOLS]
        for _ in range(self.opts.repeat):
            for tool in fast:
                self.measure(rows[tool], targets[tool])
        for tool in tools:
            if tool not in fast:
                self.measure(rows[tool], targets[tool])
        return [rows[t] for t in tools]

    def warm_up(self, target: Target) -> Mailbox:
        """An unreported drain: Dovecot builds its index and moves new/ to cur/ on the first
        RETR of each message; afterwards every tool sees the same, settled mailbox.  Returns
        the mailbox with its size as served."""
        row = Row("warm-up", "drain", target.mailbox)
        self.measure(row, target)
        if row.errors:
            raise SystemExit(f"fetch: warm-up drain of {target.user} failed: {row.errors}")
        octets = int(json.loads(row.runs[0].stdout)["octets"])
        return Mailbox(target.user, target.mailbox.count, octets)


def _load(server: Dovecot, opts: Options, subset: int) -> list[int]:
    """Generate the mailbox into Dovecot (its first ``subset`` also for SUBSET_USER)."""
    sizes: list[int] = []

    def raws() -> Iterator[bytes]:
        for msg in generate(opts.count, opts.seed, median_size=MEDIAN_SIZE, max_size=MAX_SIZE):
            if len(sizes) < subset:
                server.add_messages(SUBSET_USER, [msg.raw])
            sizes.append(len(msg.raw))
            yield msg.raw

    server.add_messages(USER, raws())
    return sizes


def run(opts: Options) -> Section:
    opts.workdir.mkdir(parents=True, exist_ok=True)
    with scratch_filesystem(opts.workdir / "fetch-fs") as (root, disk):
        return _run(opts, root, disk)


def _run(opts: Options, root: Path, disk: str) -> Section:
    bench = _Bench(opts, root / "fetch")
    remove_tree(bench.work)
    bench.work.mkdir(parents=True)
    started = time.monotonic()
    machine = machine_description()
    rows: list[Row] = []
    profile_text = ""
    lockstep_count = opts.rtt_lockstep_count
    if not 0 < lockstep_count < opts.count:
        lockstep_count = 0  # the whole mailbox
    users = {USER: PASSWORD, SUBSET_USER: PASSWORD}
    with Dovecot(bench.work / "dovecot", users) as server:
        t0 = time.monotonic()
        sizes = _load(server, opts, lockstep_count)
        flush_disks()
        bench.say(
            f"fetch: generated {len(sizes):,} messages ({sum(sizes) / 1e6:,.1f} MB, seed "
            f"{opts.seed}) into a private Dovecot in {time.monotonic() - t0:.0f} s"
        )
        host, port = server.host, server.port
        whole = bench.warm_up(Target("warm-up", host, port, None, Mailbox(USER, len(sizes), 0)))
        rows += bench.condition(Target(LOOPBACK, host, port, None, whole))
        if bench.tools_for(TLS):
            rows += bench.condition(Target(TLS, host, server.tls_port, server.ca_file, whole))
        if bench.tools_for(RTT):
            with DelayProxy(host, port, one_way_delay=ONE_WAY_DELAY) as proxy:
                lockstep = None
                if lockstep_count:
                    part = Mailbox(SUBSET_USER, lockstep_count, 0)
                    part = bench.warm_up(Target("warm-up", host, port, None, part))
                    lockstep = Target(RTT, proxy.host, proxy.port, None, part)
                rows += bench.condition(Target(RTT, proxy.host, proxy.port, None, whole), lockstep)
        if opts.profile is not None:
            profile_text = _profile(bench, Target(LOOPBACK, host, port, None, whole), opts.profile)
    elapsed = time.monotonic() - started
    versions = {
        "Dovecot": tool_version(["dovecot", "--version"]),
        "mpop": tool_version(["mpop", "--version"]).removeprefix("mpop version "),
        "fetchmail": tool_version(["fetchmail", "--version"])
        .removeprefix("This is fetchmail release ")
        .rstrip("."),
        "getmail6": tool_version(["getmail", "--version"]).removeprefix("getmail "),
    }
    if not opts.keep_workdir:
        remove_tree(bench.work)
    machine += "; load average at the start of each condition: " + ", ".join(
        f"{cond} {load:.2f}" for cond, load in bench.loads.items()
    )
    machine += f"; Dovecot's mail and every tool's store on {disk}"
    return _report(opts, whole, sizes, rows, machine, versions, elapsed, profile_text)


def _profile(bench: _Bench, target: Target, out: Path) -> str:
    """One extra mailvault fetch under cProfile; return the top functions as text."""
    store = bench.work / "runs" / "profile"
    remove_tree(store)
    store.mkdir(parents=True)
    inv = _mailvault(store, target)
    python, args = inv.argv[0], inv.argv[3:]  # drop "-m mailvault"
    argv = [python, "-m", "benchmarks._profiled", str(out), *args]
    flush_disks()
    m = run_measured(argv, env=inv.env, cwd=ROOT, timeout=RUN_TIMEOUT, log_dir=store / "log")
    remove_tree(store)
    text = StringIO()
    if m.returncode != 0:
        return f"profiled mailvault run failed: {m.failure()}"
    text.write(f"cProfile of one mailvault fetch ({m.seconds:.1f} s under the profiler):\n")
    # Cumulative: mailvault's own functions (the CLI and runpy frames above them say nothing);
    # self time: everything, C functions included.
    pstats.Stats(str(out), stream=text).sort_stats("cumulative").print_stats(
        r"mailvault/(?!cli/|__main__)", 15
    )
    pstats.Stats(str(out), stream=text).strip_dirs().sort_stats("tottime").print_stats(15)
    bench.say(text.getvalue())
    return text.getvalue()


# -- reporting ---------------------------------------------------------------------------------


def _find(rows: list[Row], condition: str, tool: str) -> Row | None:
    for row in rows:
        if row.condition == condition and row.tool == tool:
            return row
    return None


def _ratio(a: Row | None, b: Row | None) -> float | None:
    """msg/s of ``a`` over msg/s of ``b``."""
    ra, rb = (a.rate() if a else None), (b.rate() if b else None)
    return None if ra is None or rb is None else ra / rb


def _tables(rows: list[Row]) -> tuple[list[str], list[list[str]], str]:
    header = ["condition", "tool", "best s", "msg/s", "MB/s", "peak RSS MB", "CPU s"]
    header += ["vs mpop", "vs drain", "runs (s)"]
    body = []
    for row in rows:
        best = row.best
        runs = ", ".join(f"{m.seconds:.1f}" for m in row.runs)
        if best is None:
            cells = ["failed (below)", "", "", "", "", "", ""]
        else:
            drain = _ratio(row, _find(rows, row.condition, "drain"))
            cells = [
                f"{best.seconds:.2f}",
                fmt_int(row.mailbox.count / best.seconds),
                f"{row.mailbox.octets / 1e6 / best.seconds:,.1f}",
                f"{best.max_rss_mb:,.1f}",
                f"{best.cpu_seconds:,.1f}",
                fmt_ratio(_ratio(row, _find(rows, row.condition, "mpop"))),
                "–" if drain is None else f"{drain:.0%}",
            ]
        body.append([row.condition, row.label, *cells, runs])
    return header, body, "llrrrrrrrl"


def _paired(a: Row | None, b: Row | None) -> float | None:
    """Median over rounds of (msg/s of ``a``) / (msg/s of ``b``) for runs made side by side.

    The fast tools run interleaved, round after round, so run i of one and run i of the
    other saw the same machine; on a shared machine this is steadier than best / best.
    """
    if a is None or b is None or a.errors or b.errors or not a.runs:
        return None
    if len(a.runs) != len(b.runs) or a.mailbox.count != b.mailbox.count:
        return _ratio(a, b)
    return statistics.median(y.seconds / x.seconds for x, y in zip(a.runs, b.runs, strict=True))


def _verdict(
    what: str, paired: float | None, best: float | None, target: float, pct: bool
) -> tuple[str, str, bool | None]:
    def show(v: float) -> str:
        return f"{v:.0%}" if pct else f"{v:.2f}×"

    if paired is None or best is None:
        return what, "–", None
    return what, f"{show(paired)} (best runs: {show(best)})", paired >= target


def _verdicts(rows: list[Row]) -> list[Verdict]:
    """(target, measured, met) for the three targets of issue 2; judged on paired medians."""
    mv, mpop = _find(rows, LOOPBACK, "mailvault"), _find(rows, LOOPBACK, "mpop")
    mv_rtt, drain_rtt = _find(rows, RTT, "mailvault"), _find(rows, RTT, "drain")
    rss = [m.max_rss_mb for r in rows if r.tool.startswith("mailvault") for m in r.runs]
    return [
        _verdict(
            f"loopback: mailvault msg/s ≥ {TARGET_VS_MPOP}× mpop",
            _paired(mv, mpop),
            _ratio(mv, mpop),
            TARGET_VS_MPOP,
            pct=False,
        ),
        _verdict(
            f"20 ms RTT: mailvault msg/s ≥ {TARGET_VS_DRAIN_RTT:.0%} of the bare drain",
            _paired(mv_rtt, drain_rtt),
            _ratio(mv_rtt, drain_rtt),
            TARGET_VS_DRAIN_RTT,
            pct=True,
        ),
        (
            f"peak RSS of mailvault < {TARGET_RSS_MB:.0f} MB (any run)",
            f"{max(rss):.1f} MB" if rss else "–",
            None if not rss else max(rss) < TARGET_RSS_MB,
        ),
    ]


def _latency_tolerance(rows: list[Row]) -> list[str]:
    """Each tool's rate with the added round-trip time as a share of its own loopback rate."""
    shares = []
    for tool in ("drain", "mailvault", "mpop"):
        far, near = _find(rows, RTT, tool), _find(rows, LOOPBACK, tool)
        share = _ratio(far, near)
        if far is not None and near is not None and share is not None:
            shares.append(f"{far.label} {share:.0%}")
    return shares


def _report(
    opts: Options,
    mailbox: Mailbox,
    raw_sizes: list[int],
    rows: list[Row],
    machine: str,
    versions: dict[str, str],
    elapsed: float,
    profile_text: str,
) -> Section:
    sizes = sorted(raw_sizes)
    p99 = sizes[min(len(sizes) - 1, int(len(sizes) * 0.99))]
    described = (
        f"{mailbox.count:,} messages, {mailbox.octets / 1e6:,.1f} MB as served "
        f"(median {statistics.median(sizes) / 1000:,.1f} KB, mean "
        f"{statistics.mean(sizes) / 1000:,.1f} KB, p99 {p99 / 1000:,.0f} KB, max "
        f"{sizes[-1] / 1000:,.0f} KB), seed {opts.seed}"
    )
    header, body, align = _tables(rows)
    verdicts = _verdicts(rows)
    ok = all(not r.errors for r in rows)

    md = [
        f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (" — **quick run, not the reference size**" if opts.quick else "")
        + f"; whole benchmark {elapsed / 60:.1f} min.",
        "",
        f"- Mailbox: {described}.",
        f"- Machine: {machine}.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"- Runs: drain, mailvault and mpop {opts.repeat} rounds, interleaved; the table shows "
        "each one's best run, the verdicts the median over rounds of the side-by-side ratio "
        "(steadier on a shared machine; best-run ratios in brackets). Others once. "
        "MB = 10^6 bytes as Dovecot serves them; RSS in MiB.",
        "",
        verdict_table(verdicts, "lrl"),
        "",
        markdown_table(header, body, align),
    ]
    if missing_tools():
        md += ["", "Not installed, so not measured: " + ", ".join(missing_tools()) + "."]
    proxy = [
        f"{r.label} {r.best.host_cpu_seconds:.1f} s"
        for r in rows
        if r.condition == RTT and r.best is not None and not r.subset
    ]
    if proxy:
        md += [
            "",
            "CPU used by the delay proxy (Python threads on the same 2 cores) during the best "
            f"{RTT} runs: " + ", ".join(proxy) + ".",
        ]
    tolerance = _latency_tolerance(rows)
    if tolerance:
        md += [
            "",
            f"What the round trips cost each pipelined tool (msg/s at {RTT} ÷ msg/s on "
            f"{LOOPBACK}, best runs): " + ", ".join(tolerance) + ".",
        ]
    failures = [f"- {r.condition}, {r.label}: {e}" for r in rows for e in r.errors]
    if failures:
        md += ["", "Failed runs (a failed tool gets no numbers):", "", *failures]
    console = [
        f"fetch benchmark: {described}",
        machine,
        "",
        text_table(header, body, align),
        "",
        *verdict_lines(verdicts),
        *failures,
    ]
    if profile_text:
        console += ["", f"profile written to {opts.profile}"]
    return Section(NAME, "\n".join(md) + "\n", "\n".join(console), ok)
