"""search: parse + index rate and query latency, mailvault vs notmuch and mu.

The seeded corpus (default 10,000 messages, the same generator arguments as the fetch
benchmark) is written once as a Maildir.  Then, each in a fresh process under GNU time, into a
fresh store or database of its own:

* ``mailvault import MAILDIR --format maildir`` into a new vault: store, parse and index, what
  a user runs;
* ``mailvault import --no-index`` into another new vault, then ``mailvault index`` on it, so
  the parse + index part is visible on its own;
* ``notmuch new`` with a private config whose ``database.mail_root`` is the Maildir (the
  database itself goes to a scratch directory, so the Maildir is never touched);
* ``mu init --maildir MAILDIR --muhome DIR`` (not timed), then ``mu index --muhome DIR``.

Each row reports wall time, messages/s, peak RSS (GNU time: the largest single process) and
the summed PSS of all processes of the run (sampled every 100 ms, see :class:`TreeMemory`: it
counts mailvault's parse workers too), CPU time, and the size on disk of what it built.

Then 20 queries (:func:`choose_queries`: values picked from the generator's own record of the
corpus) are run as whole processes against the databases just built: ``mailvault search Q``
(the console script, default output: 50 hits with snippets), ``notmuch search Q`` and ``mu find
Q`` (their default output: every hit), and, for reference, the peers limited to 50 hits.  Each
query runs once unmeasured (warm caches), then ``QUERY_RUNS`` times; the median per query is
kept, and the median and p95 over the 20 queries are compared.  Hit counts of every tool (and
what the generator's record says) are reported next to the times.

:func:`corpus` is shared with the export benchmark (the Maildir is written once per run).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
from mailvault.testkit.generator import GeneratedMessage, generate, write_maildir

ROOT = Path(__file__).resolve().parent.parent
NAME = "search"
TITLE = "Search: mailvault vs notmuch, mu"

# The corpus: the same generator arguments as the fetch benchmark.
MEDIAN_SIZE = 15_000
MAX_SIZE = 2_000_000

RUN_TIMEOUT = 1800.0
QUERY_TIMEOUT = 120.0
QUERY_RUNS = 5  # measured runs per query and tool, after one unmeasured warm-up run
QUERY_RUNS_QUICK = 3
PEER_LIMIT = 50  # mailvault search prints 50 hits by default; the peers' "@50" columns

# Targets from issue 3.
TARGET_RSS_MB = 500.0

# The console script: it has a fast path for search (no click, no parser imports).
MAILVAULT = str(Path(sys.executable).parent / "mailvault")


def mailvault_argv(vault: Path, *args: str) -> list[str]:
    """``mailvault -q --vault VAULT ARGS`` through the console script."""
    return [MAILVAULT, "-q", "--vault", str(vault), *args]


# Where mailvault's bytecode is cached during a run (see :func:`prepare_python`).
_PYCACHE: list[Path] = []


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of every measured tool: UTC, a UTF-8 locale, no user vault, and
    Python's bytecode cache on (in the run's scratch directory, see :func:`prepare_python`)."""
    env = dict(os.environ, TZ="UTC", LC_ALL="C.UTF-8")
    for name in ("MAILVAULT_VAULT", "NOTMUCH_CONFIG", "NOTMUCH_PROFILE", "MUHOME"):
        env.pop(name, None)
    if _PYCACHE:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(_PYCACHE[0])
    env.update(extra)
    return env


def prepare_python(opts: Options) -> None:
    """Give mailvault a bytecode cache, as an installed package has.

    A shell with ``PYTHONDONTWRITEBYTECODE`` set (as some CI and sandbox environments have)
    makes every mailvault process compile its changed modules from source again, which adds
    10-20 ms to each search for nothing a user would see.  The measured processes get a
    cache under the scratch directory instead (``PYTHONPYCACHEPREFIX``; the source tree is
    not written to), filled here before anything is measured.
    """
    if _PYCACHE:
        return
    _PYCACHE.append(opts.workdir / "pycache")
    env = bench_env()
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "mailvault")],
        env=env,
        capture_output=True,
    )
    for args in (["--version"], ["-q", "--vault", str(opts.workdir / "none"), "search", "x"]):
        subprocess.run([MAILVAULT, *args], env=env, capture_output=True)


# -- the corpus ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """What the generator says it wrote into one message (what the queries need of it)."""

    message_id: str
    date: datetime
    from_addr: str
    recipients: tuple[str, ...]  # To and Cc addresses
    subject: str
    words: frozenset[str]  # body words (GeneratedMessage.words)
    marker: str
    attachments: tuple[str, ...]  # file names
    size: int


@dataclass
class Corpus:
    """The generated Maildir and the record of what is in it."""

    maildir: Path
    count: int
    seed: int
    octets: int  # sum of the message sizes (CRLF, as generated)
    sizes: list[int]
    records: list[Record]
    phrase: str
    phrase_hits: int  # messages whose body holds ``phrase``
    seconds: float  # to generate and write it

    def describe(self) -> str:
        sizes = sorted(self.sizes)
        p99 = sizes[min(len(sizes) - 1, int(len(sizes) * 0.99))]
        return (
            f"{self.count:,} messages, {self.octets / 1e6:,.1f} MB (median "
            f"{statistics.median(sizes) / 1000:,.1f} KB, p99 {p99 / 1000:,.0f} KB, max "
            f"{sizes[-1] / 1000:,.0f} KB) in one Maildir `new/`, seed {self.seed}"
        )


PHRASE = "next release"
_CORPORA: dict[tuple[Path, int, int], Corpus] = {}


def _phrase_re(phrase: str) -> re.Pattern[str]:
    return re.compile(r"\b" + r"[\W_]+".join(map(re.escape, phrase.split())) + r"\b")


def corpus(opts: Options) -> Corpus:
    """The run's corpus: generated and written as a Maildir on first use, then reused."""
    key = (opts.workdir, opts.count, opts.seed)
    if key in _CORPORA and _CORPORA[key].maildir.is_dir():
        return _CORPORA[key]
    maildir = opts.workdir / f"corpus-{opts.count}-{opts.seed}" / "Maildir"
    remove_tree(maildir.parent)
    maildir.parent.mkdir(parents=True)
    records: list[Record] = []
    phrase_re = _phrase_re(PHRASE)
    phrase_hits = 0
    started = time.monotonic()

    def recorded() -> Iterator[GeneratedMessage]:
        nonlocal phrase_hits
        for msg in generate(opts.count, opts.seed, median_size=MEDIAN_SIZE, max_size=MAX_SIZE):
            records.append(
                Record(
                    message_id=msg.message_id,
                    date=msg.date,
                    from_addr=msg.from_addr,
                    recipients=(*msg.to, *msg.cc),
                    subject=msg.subject,
                    words=msg.words,
                    marker=msg.marker,
                    attachments=tuple(a.filename for a in msg.attachments),
                    size=msg.size,
                )
            )
            if phrase_re.search(msg.body_text.lower()):
                phrase_hits += 1
            yield msg

    write_maildir(recorded(), maildir)
    flush_disks()
    sizes = [r.size for r in records]
    found = Corpus(
        maildir=maildir,
        count=len(records),
        seed=opts.seed,
        octets=sum(sizes),
        sizes=sizes,
        records=records,
        phrase=PHRASE,
        phrase_hits=phrase_hits,
        seconds=time.monotonic() - started,
    )
    print(f"corpus: {found.describe()}, written to {maildir} in {found.seconds:.0f} s", flush=True)
    _CORPORA[key] = found
    return found


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (as ``du``), 0 if it does not exist."""
    total = 0
    if path.is_file():
        return path.stat().st_blocks * 512
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def maildir_count(path: Path) -> int:
    return sum(len(os.listdir(path / sub)) for sub in ("new", "cur") if (path / sub).is_dir())


# -- memory of a whole process tree ------------------------------------------------------------


class TreeMemory:
    """While a measured run lasts, sample the summed PSS of every process below this one.

    GNU time's ``ru_maxrss`` is the peak of the largest single process; mailvault parses in
    two worker processes next to the main one, so the job's footprint is their sum.  PSS
    (proportional set size) counts each shared page once over the processes sharing it, so
    forked workers are not double-counted.  Sampled every ``interval`` seconds: a peak
    shorter than that can be missed.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-memory", daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kb = max(self.peak_kb, self._sample())

    @staticmethod
    def _children(pid: int) -> list[int]:
        out: list[int] = []
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return out
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(p) for p in f.read().split()]
            except OSError:
                pass
        return out

    def _sample(self) -> int:
        total = 0
        todo = self._children(os.getpid())
        while todo:
            pid = todo.pop()
            todo += self._children(pid)
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
                            break
            except (OSError, ValueError):
                pass
        return total


def measure_tree(
    argv: list[str],
    *,
    env: dict[str, str],
    log_dir: Path,
    cwd: Path | None = None,
    timeout: float = RUN_TIMEOUT,
) -> tuple[Measurement, float]:
    """:func:`run_measured` after a ``sync``, plus the peak summed PSS (MiB) of the run."""
    flush_disks()
    with TreeMemory() as tree:
        m = run_measured(argv, env=env, cwd=cwd, timeout=timeout, log_dir=log_dir)
    return m, tree.peak_mb


def notmuch_config(path: Path, mail_root: Path, database: Path) -> Path:
    """A private notmuch config: mail in ``mail_root``, database in ``database``, no tags,
    no flag synchronisation (so ``notmuch new`` never renames a file of the Maildir)."""
    database.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[database]\n"
        f"path={database}\n"
        f"mail_root={mail_root}\n"
        "[user]\nname=Bench\nprimary_email=bench@example.invalid\n"
        "[new]\ntags=\nignore=\n"
        "[search]\nexclude_tags=\n"
        "[maildir]\nsynchronize_flags=false\n",
        encoding="utf-8",
    )
    return path


# -- index runs --------------------------------------------------------------------------------


@dataclass
class IndexRun:
    """One measured run that built (part of) an index."""

    m: Measurement
    pss_mb: float
    indexed: int  # messages the tool says it indexed (or stored, for --no-index)
    index_bytes: int  # size on disk of the search index
    extra_bytes: int  # mailvault: the catalog (metadata, addresses, parts); else 0
    store: Path  # what it built (kept for the queries if it is the last run)
    note: str = ""


@dataclass
class IndexRow:
    """All runs of one tool."""

    tool: str
    label: str
    runs: list[IndexRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def best(self) -> IndexRun | None:
        good = [r for r in self.runs if r.m.returncode == 0]
        return min(good, key=lambda r: r.m.seconds) if good and not self.errors else None


INDEX_LABELS = {
    "mailvault": "mailvault import (store + parse + index)",
    "mailvault-store": "mailvault import --no-index (store only)",
    "mailvault-index": "mailvault index (parse + index only)",
    "notmuch": "notmuch new",
    "mu": "mu index",
}


def _mailvault_init(vault: Path) -> None:
    subprocess.run(mailvault_argv(vault, "init"), check=True, env=bench_env(), capture_output=True)


def _import_report(m: Measurement) -> dict[str, object]:
    report = json.loads(m.stdout)
    if not isinstance(report, dict):
        raise ValueError("import report is not an object")
    return report


class _IndexBench:
    def __init__(self, opts: Options, corp: Corpus, work: Path) -> None:
        self.opts = opts
        self.corpus = corp
        self.work = work
        self.runs = 0
        self.rows = {tool: IndexRow(tool, INDEX_LABELS[tool]) for tool in INDEX_LABELS}
        self.latest: dict[str, Path] = {}  # tool -> store of its last good run

    def say(self, text: str) -> None:
        print(text, flush=True)

    def _fresh(self, tool: str) -> Path:
        self.runs += 1
        store = self.work / "index-runs" / f"{self.runs:03d}-{tool}"
        remove_tree(store)
        store.mkdir(parents=True)
        return store

    def _record(self, tool: str, run: IndexRun, error: str | None) -> None:
        row = self.rows[tool]
        row.runs.append(run)
        if error is None and run.m.returncode != 0:
            error = run.m.failure()
        if error is None and run.indexed != self.corpus.count:
            error = f"indexed {run.indexed:,} of {self.corpus.count:,} messages"
        if error is not None:
            row.errors.append(f"{error} after {run.m.seconds:.0f} s")
        else:
            old = self.latest.get(tool)
            self.latest[tool] = run.store
            if old is not None and old != run.store and not self.opts.keep_workdir:
                remove_tree(old)
        n = self.corpus.count
        state = "ok" if error is None else f"FAILED ({error})"
        self.say(
            f"  {tool:16} {n:6,} msgs {run.m.seconds:8.2f} s {n / run.m.seconds:8,.0f} msg/s "
            f"{run.m.max_rss_mb:7.1f} MB RSS {run.pss_mb:7.1f} MB PSS(all) "
            f"{run.m.cpu_seconds:7.1f} s CPU  index {run.index_bytes / 1e6:7.1f} MB  {state}"
        )

    def mailvault(self, *, index: bool) -> Path:
        """``mailvault import`` into a fresh vault; returns the vault."""
        tool = "mailvault" if index else "mailvault-store"
        store = self._fresh(tool)
        vault = store / "vault"
        _mailvault_init(vault)
        argv = mailvault_argv(vault, "import", str(self.corpus.maildir), "--format", "maildir")
        argv += ["--json"] + ([] if index else ["--no-index"])
        m, pss = measure_tree(argv, env=bench_env(), log_dir=store / "log")
        error, indexed, note = None, 0, ""
        try:
            report = _import_report(m)
            imported = int(str(report["imported"]))
            indexed = imported
            if index:
                idx = report.get("index")
                if report.get("index_error") or not isinstance(idx, dict):
                    error = f"index error: {report.get('index_error')}"
                else:
                    indexed = int(idx["documents"])
                    note = f"of which parse + index {float(idx['seconds']):.1f} s"
        except (ValueError, KeyError, TypeError) as exc:
            error = f"unreadable report: {exc}"
        sizes = (disk_usage(vault / "index"), disk_usage(vault / "catalog.sqlite"))
        run = IndexRun(m, pss, indexed, *(sizes if index else (0, 0)), vault, note)
        self._record(tool, run, error)
        return vault

    def mailvault_index(self, vault: Path) -> None:
        """``mailvault index`` on a vault imported with ``--no-index`` (not copied: it is
        used up, and a fresh one is imported per run)."""
        m, pss = measure_tree(
            mailvault_argv(vault, "index", "--json"),
            env=bench_env(),
            log_dir=vault.parent / "log-index",
        )
        error, indexed = None, 0
        try:
            report = json.loads(m.stdout)
            indexed = int(report["documents"])
        except (ValueError, KeyError, TypeError) as exc:
            error = f"unreadable report: {exc}"
        run = IndexRun(
            m,
            pss,
            indexed,
            disk_usage(vault / "index"),
            disk_usage(vault / "catalog.sqlite"),
            vault,
        )
        self._record("mailvault-index", run, error)

    def notmuch(self) -> None:
        store = self._fresh("notmuch")
        config = notmuch_config(store / "config", self.corpus.maildir, store / "db")
        env = bench_env(NOTMUCH_CONFIG=str(config), HOME=str(store))
        m, pss = measure_tree(["notmuch", "new", "--quiet"], env=env, log_dir=store / "log")
        indexed = notmuch_count(env, "*")
        self._record("notmuch", IndexRun(m, pss, indexed, disk_usage(store / "db"), 0, store), None)

    def mu(self) -> None:
        store = self._fresh("mu")
        home = store / "muhome"
        env = bench_env(HOME=str(store))
        subprocess.run(
            ["mu", "init", "--maildir", str(self.corpus.maildir), "--muhome", str(home)],
            check=True,
            env=env,
            capture_output=True,
        )
        m, pss = measure_tree(
            ["mu", "index", "--muhome", str(home), "--quiet"], env=env, log_dir=store / "log"
        )
        indexed = _mu_count(env, home, "")
        run = IndexRun(m, pss, indexed, disk_usage(home / "xapian"), 0, home)
        self._record("mu", run, None)


def notmuch_count(env: dict[str, str], query: str) -> int:
    done = subprocess.run(["notmuch", "count", query], env=env, capture_output=True, text=True)
    try:
        return int(done.stdout.strip())
    except ValueError:
        return -1


def _mu_count(env: dict[str, str], home: Path, query: str) -> int:
    done = subprocess.run(
        ["mu", "find", "--muhome", str(home), "--fields=i", query],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode == 4:  # no matches
        return 0
    return len(done.stdout.splitlines()) if done.returncode == 0 else -1


# -- queries -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One query in each tool's syntax, and what the generator's record says about it."""

    what: str
    mailvault: str
    notmuch: str
    mu: str
    expected: int | None = None  # from the generator's record
    exact: bool = True  # False: ``expected`` counts message bodies only (a lower bound)

    def expected_text(self) -> str:
        if self.expected is None:
            return "–"
        return fmt_int(self.expected) if self.exact else f"≥{self.expected:,}"


_TOKEN = re.compile(r"[^\W\d_]+")
_LATIN_ACCENTED = re.compile(r"^[a-zà-ÿœ]+$")
_CYRILLIC = re.compile(r"^[а-яё]+$")
_CJK = re.compile(r"^[\u3040-\u30ff\u4e00-\u9fff]+$")


def _most_common(counter: Counter[str], keep: Callable[[str], bool]) -> tuple[str, int]:
    """The most frequent key that ``keep`` accepts (ties: alphabetical)."""
    return min(((k, c) for k, c in counter.items() if keep(k)), key=lambda kc: (-kc[1], kc[0]))


def _closest(counter: Counter[str], keep: Callable[[str], bool], target: float) -> list[str]:
    """Keys that ``keep`` accepts, the one whose count is closest to ``target`` first."""
    return [
        k
        for k, c in sorted(
            ((k, c) for k, c in counter.items() if keep(k)),
            key=lambda kc: (abs(kc[1] - target), kc[0]),
        )
    ]


def choose_queries(corp: Corpus) -> list[Query]:
    """The 20 queries, with concrete values picked from the corpus by fixed rules."""
    recs = corp.records
    n = len(recs)
    senders = Counter(r.from_addr for r in recs).most_common()
    sender = senders[0][0]
    sender2 = senders[1][0]
    name_word = sender2.split("@")[0].split(".")[-1]
    personal = Counter(
        a for r in recs for a in r.recipients if not a.split("@")[1].startswith("lists.")
    )
    recipient, _ = _most_common(personal, lambda a: True)

    words: Counter[str] = Counter(w for r in recs for w in r.words)

    def plain(w: str) -> bool:
        return w.isascii() and w.isalpha() and len(w) >= 6

    medium = _closest(words, plain, 0.10 * n)[0]
    common, common2 = _closest(words, plain, 0.45 * n)[:2]
    very_common, _ = _most_common(words, lambda w: True)
    rare = recs[int(n * 0.4242)].marker
    cyrillic, _ = _most_common(words, lambda w: bool(_CYRILLIC.match(w)) and len(w) >= 6)
    umlaut, _ = _most_common(
        words, lambda w: len(w) >= 6 and any(ch in w for ch in "äöüß") and w.isalpha()
    )
    japanese, _ = _most_common(words, lambda w: bool(_CJK.match(w)) and len(w) >= 2)
    prefix = common[:5]

    list_tokens = {"re", "fwd", "aw", "photo", "chess", "atlas", "dev", "announce", "garten"}
    subjects: Counter[str] = Counter()
    for r in recs:
        subjects.update(set(_TOKEN.findall(r.subject.lower())) - list_tokens)
    subject_word, _ = _most_common(subjects, lambda w: w.isascii() and len(w) >= 6)
    subject_accented, _ = _most_common(
        subjects, lambda w: not w.isascii() and bool(_LATIN_ACCENTED.match(w)) and len(w) >= 5
    )
    names: Counter[str] = Counter(
        a for r in recs for a in r.attachments if a != "forwarded.eml" and a.isascii()
    )
    attachment, _ = _most_common(names, lambda a: True)
    message_id = recs[n // 3].message_id

    def count(pred: Callable[[Record], bool]) -> int:
        return sum(1 for r in recs if pred(r))

    def in_month(r: Record) -> bool:
        return datetime(2024, 3, 1, tzinfo=UTC) <= r.date < datetime(2024, 4, 1, tzinfo=UTC)

    def body(word: str) -> int:
        return count(lambda r: word in r.words)

    return [
        Query(
            "sender (address)",
            f"from:{sender}",
            f"from:{sender}",
            f"from:{sender}",
            count(lambda r: r.from_addr == sender),
        ),
        Query(
            "sender (word of name/address)",
            f"from:{name_word}",
            f"from:{name_word}",
            f"from:{name_word}",
        ),
        Query(
            "recipient (To or Cc address)",
            f"recipient:{recipient}",
            f"to:{recipient}",
            f"recip:{recipient}",
            count(lambda r: recipient in r.recipients),
        ),
        Query(
            "subject word",
            f"subject:{subject_word}",
            f"subject:{subject_word}",
            f"subject:{subject_word}",
            count(lambda r: subject_word in _TOKEN.findall(r.subject.lower())),
        ),
        Query(
            "non-ASCII subject word",
            f"subject:{subject_accented}",
            f"subject:{subject_accented}",
            f"subject:{subject_accented}",
            count(lambda r: subject_accented in _TOKEN.findall(r.subject.lower())),
        ),
        Query("rare word (1 message)", rare, rare, rare, body(rare), exact=False),
        Query("medium word (~10 %)", medium, medium, medium, body(medium), exact=False),
        Query("common word (~45 %)", common, common, common, body(common), exact=False),
        Query(
            "very common word (most frequent)",
            very_common,
            very_common,
            very_common,
            body(very_common),
            exact=False,
        ),
        Query("Cyrillic word", cyrillic, cyrillic, cyrillic, body(cyrillic), exact=False),
        Query("German word with umlaut", umlaut, umlaut, umlaut, body(umlaut), exact=False),
        Query("Japanese word", japanese, japanese, japanese, body(japanese), exact=False),
        Query(
            "phrase",
            f'"{corp.phrase}"',
            f'"{corp.phrase}"',
            f'"{corp.phrase}"',
            corp.phrase_hits,
            exact=False,
        ),
        Query(
            "prefix wildcard",
            f"{prefix}*",
            f"{prefix}*",
            f"{prefix}*",
            count(lambda r: any(w.startswith(prefix) for w in r.words)),
            exact=False,
        ),
        Query(
            "date range (one month)",
            "date:[2024-03-01 TO 2024-03-31]",
            "date:2024-03-01..2024-03-31",
            "date:20240301..20240331",
            count(in_month),
        ),
        Query(
            "sender and year",
            f"from:{sender} date:2024",
            f"from:{sender} date:2024-01-01..2024-12-31",
            f"from:{sender} date:20240101..20241231",
            count(lambda r: r.from_addr == sender and r.date.year == 2024),
        ),
        Query(
            "attachment name",
            f"attachment:{attachment}",
            f"attachment:{attachment}",
            f"file:{attachment}",
            count(lambda r: attachment in r.attachments),
        ),
        Query(
            "has attachment and word",
            f"has:attachment {common}",
            f"tag:attachment {common}",
            f"flag:attach {common}",
            count(lambda r: bool(r.attachments) and common in r.words),
            exact=False,
        ),
        Query(
            "boolean mix",
            f"from:{sender} AND ({common} OR {medium}) AND NOT {common2}",
            f"from:{sender} AND ({common} OR {medium}) AND NOT {common2}",
            f"from:{sender} AND ({common} OR {medium}) AND NOT {common2}",
        ),
        Query(
            "Message-ID",
            f"message-id:{message_id}",
            f"id:{message_id}",
            f"msgid:{message_id}",
            1,
        ),
    ]


QUERY_TOOLS = ("mailvault", "notmuch", "mu", "notmuch@50", "mu@50")
QUERY_LABELS = {
    "mailvault": "mailvault search",
    "notmuch": "notmuch search",
    "mu": "mu find",
    "notmuch@50": f"notmuch search --limit={PEER_LIMIT}",
    "mu@50": f"mu find --maxnum={PEER_LIMIT} --reverse",
}


@dataclass
class QueryResult:
    """The runs of one query by one tool."""

    seconds: list[float] = field(default_factory=list)
    rss_mb: float = 0.0
    hits: int | None = None
    lines: int = 0  # lines printed by the timed runs
    error: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds and not self.error else None


class _QueryBench:
    def __init__(self, opts: Options, work: Path, stores: dict[str, Path]) -> None:
        self.work = work
        self.runs = QUERY_RUNS_QUICK if opts.quick else QUERY_RUNS
        self.vault = stores["mailvault"]
        self.notmuch_env: dict[str, str] | None = None
        self.muhome: Path | None = stores.get("mu")
        if "notmuch" in stores:
            nm = stores["notmuch"]
            self.notmuch_env = bench_env(NOTMUCH_CONFIG=str(nm / "config"), HOME=str(nm))
        self.mu_env = bench_env(HOME=str(work))

    def tools(self) -> list[str]:
        out = ["mailvault"]
        if self.notmuch_env is not None:
            out += ["notmuch"]
        if self.muhome is not None:
            out += ["mu"]
        if self.notmuch_env is not None:
            out += ["notmuch@50"]
        if self.muhome is not None:
            out += ["mu@50"]
        return out

    def argv(self, tool: str, q: Query) -> tuple[list[str], dict[str, str]]:
        if tool == "mailvault":
            return mailvault_argv(self.vault, "search", q.mailvault), bench_env()
        if tool.startswith("notmuch") and self.notmuch_env is not None:
            limit = [f"--limit={PEER_LIMIT}"] if tool.endswith("@50") else []
            return ["notmuch", "search", *limit, q.notmuch], self.notmuch_env
        if tool.startswith("mu") and self.muhome is not None:
            limit = [f"--maxnum={PEER_LIMIT}", "--reverse"] if tool.endswith("@50") else []
            return ["mu", "find", "--muhome", str(self.muhome), *limit, q.mu], self.mu_env
        raise ValueError(tool)

    def ok(self, tool: str, m: Measurement) -> bool:
        """Exit status meaning "answered": mailvault and grep-like 1, mu 4 for no hits."""
        if tool == "mailvault":
            return m.returncode in (0, 1)
        if tool.startswith("mu"):
            return m.returncode in (0, 4)
        return m.returncode == 0

    def hits(self, tool: str, q: Query, timed: Measurement) -> int | None:
        if tool == "mailvault":
            done = subprocess.run(
                mailvault_argv(self.vault, "search", "--count", q.mailvault),
                env=bench_env(),
                capture_output=True,
                text=True,
            )
            try:
                return int(done.stdout.strip())
            except ValueError:
                return None
        if tool == "notmuch" and self.notmuch_env is not None:
            return notmuch_count(self.notmuch_env, q.notmuch)
        if tool == "mu":  # mu find prints one line per message
            return 0 if timed.returncode == 4 else len(timed.stdout.splitlines())
        return None

    def run(self, queries: list[Query]) -> dict[tuple[int, str], QueryResult]:
        out: dict[tuple[int, str], QueryResult] = {}
        tools = self.tools()
        log = self.work / "query-log"
        for i, q in enumerate(queries):
            for tool in tools:  # warm-up, hit counts
                res = out[(i, tool)] = QueryResult()
                argv, env = self.argv(tool, q)
                warm = run_measured(argv, env=env, timeout=QUERY_TIMEOUT, log_dir=log)
                if not self.ok(tool, warm):
                    res.error = warm.failure()
                    continue
                res.hits = self.hits(tool, q, warm)
                res.lines = len(warm.stdout.splitlines())
            for _ in range(self.runs):  # rounds over the tools: noise falls on all alike
                for tool in tools:
                    res = out[(i, tool)]
                    if res.error:
                        continue
                    argv, env = self.argv(tool, q)
                    m = run_measured(argv, env=env, timeout=QUERY_TIMEOUT, log_dir=log)
                    if not self.ok(tool, m):
                        res.error = m.failure()
                        continue
                    res.seconds.append(m.seconds)
                    res.rss_mb = max(res.rss_mb, m.max_rss_mb)
            line = "  ".join(
                f"{tool} {_ms(out[(i, tool)].median)} ms/{_hits(out[(i, tool)].hits)}"
                for tool in tools
            )
            print(f"  q{i + 1:02d} {q.what:32} {line}", flush=True)
        return out


def _ms(seconds: float | None) -> str:
    return "err" if seconds is None else f"{seconds * 1000:,.0f}"


def _hits(hits: int | None) -> str:
    return "–" if hits is None else ("err" if hits < 0 else fmt_int(hits))


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (of 20 values: the 19th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


# -- running -------------------------------------------------------------------------------------


def available() -> str | None:
    """Why this benchmark cannot run here, or None (a missing peer is only skipped)."""
    if not os.access(MAILVAULT, os.X_OK):
        return f"no mailvault console script at {MAILVAULT} (pip install -e .)"
    return None


def missing_tools() -> list[str]:
    return [tool for tool in ("notmuch", "mu") if shutil.which(tool) is None]


def run(opts: Options) -> Section:
    opts.workdir.mkdir(parents=True, exist_ok=True)
    with scratch_filesystem(opts.workdir / "search-fs") as (root, disk):
        return _run(opts, root, disk)


def _run(opts: Options, root: Path, disk: str) -> Section:
    started = time.monotonic()
    machine = machine_description()
    work = root / "search"
    remove_tree(work)
    work.mkdir(parents=True)
    prepare_python(opts)
    corp = corpus(opts)
    skip = {*opts.skip_tools, *missing_tools()}
    peers = [t for t in ("notmuch", "mu") if t not in skip]
    if opts.only_tools:
        peers = [t for t in peers if t in opts.only_tools]

    print(f"search: indexing, {opts.repeat} run(s) of each tool", flush=True)
    bench = _IndexBench(opts, corp, work)
    load_index = os.getloadavg()[0]
    for _ in range(opts.repeat):
        bench.mailvault(index=True)
        vault = bench.mailvault(index=False)
        bench.mailvault_index(vault)
        if "notmuch" in peers:
            bench.notmuch()
        if "mu" in peers:
            bench.mu()
    index_rows = [bench.rows[t] for t in INDEX_LABELS if bench.rows[t].runs]

    queries = choose_queries(corp)
    stores = dict(bench.latest)
    results: dict[tuple[int, str], QueryResult] = {}
    qtools: list[str] = []
    load_query = os.getloadavg()[0]
    if "mailvault" in stores:
        qbench = _QueryBench(opts, work, stores)
        qtools = qbench.tools()
        print(f"search: {len(queries)} queries, 1 warm-up + {qbench.runs} runs each", flush=True)
        results = qbench.run(queries)
    versions = {
        "notmuch": tool_version(["notmuch", "--version"]).removeprefix("notmuch "),
        "mu": tool_version(["mu", "--version"]).split()[-1],
        "Xapian": _xapian_version(),
    }
    if not opts.keep_workdir:
        remove_tree(work)
    elapsed = time.monotonic() - started
    machine += f"; load average {load_index:.2f} before indexing, {load_query:.2f} before queries"
    machine += f"; every store and database on {disk}, the corpus (only read) on the root disk"
    return _report(opts, corp, index_rows, queries, results, qtools, machine, versions, elapsed)


def _xapian_version() -> str:
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "libxapian30"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


# -- reporting -----------------------------------------------------------------------------------


def _rate(corp: Corpus, row: IndexRow | None) -> float | None:
    best = row.best if row else None
    return None if best is None else corp.count / best.m.seconds


def _index_table(corp: Corpus, rows: list[IndexRow]) -> tuple[list[str], list[list[str]], str]:
    header = ["tool", "best s", "msg/s", "MB/s", "peak RSS MB", "peak PSS MB (all procs)"]
    header += ["CPU s", "index MB", "index ÷ mail", "vs mu", "runs (s)"]
    mu = next((r for r in rows if r.tool == "mu"), None)
    body = []
    for row in rows:
        runs = ", ".join(f"{r.m.seconds:.1f}" for r in row.runs)
        best = row.best
        if best is None:
            body.append([row.label, "failed (below)", *[""] * 8, runs])
            continue
        size = best.index_bytes
        if size == 0:
            size_text, share = "–", "–"
        else:
            size_text = f"{size / 1e6:,.1f}"
            share = f"{(size + best.extra_bytes) / corp.octets:.2f}×"
        if size and best.extra_bytes:
            size_text += f" + catalog {best.extra_bytes / 1e6:,.1f}"
        rate, mu_rate = _rate(corp, row), _rate(corp, mu)
        ratio = None if rate is None or mu_rate is None else rate / mu_rate
        label = row.label + (f" ({best.note})" if best.note else "")
        body.append(
            [
                label,
                f"{best.m.seconds:.2f}",
                fmt_int(corp.count / best.m.seconds),
                f"{corp.octets / 1e6 / best.m.seconds:,.1f}",
                f"{best.m.max_rss_mb:,.0f}",
                f"{best.pss_mb:,.0f}",
                f"{best.m.cpu_seconds:,.1f}",
                size_text,
                share,
                fmt_ratio(ratio),
                runs,
            ]
        )
    return header, body, "lrrrrrrrrrl"


def _query_tables(
    queries: list[Query], results: dict[tuple[int, str], QueryResult], tools: list[str]
) -> tuple[tuple[list[str], list[list[str]], str], tuple[list[str], list[list[str]], str]]:
    """(per-query table, summary table)."""
    short = {"mailvault": "mv", "notmuch": "nm", "mu": "mu", "notmuch@50": "nm@50"}
    short["mu@50"] = "mu@50"
    counted = [t for t in tools if "@" not in t]
    header = ["#", "what", "mailvault query"]
    header += [f"hits {short[t]}" for t in counted] + ["hits gen"]
    header += [f"ms {short[t]}" for t in tools]
    body = []
    for i, q in enumerate(queries):
        cells = [str(i + 1), q.what, f"`{q.mailvault}`"]
        cells += [_hits(results[(i, t)].hits) for t in counted] + [q.expected_text()]
        cells += [_ms(results[(i, t)].median) for t in tools]
        body.append(cells)
    per_query = (header, body, "lll" + "r" * (len(counted) + 1 + len(tools)))

    sheader = ["tool", "median ms", "p95 ms", "min ms", "max ms", "max RSS MB", "errors"]
    sbody = []
    for t in tools:
        medians = [results[(i, t)].median for i in range(len(queries))]
        good = [m for m in medians if m is not None]
        errors = sum(1 for m in medians if m is None)
        rss = max((results[(i, t)].rss_mb for i in range(len(queries))), default=0.0)
        if not good:
            sbody.append([QUERY_LABELS[t], "–", "–", "–", "–", "–", str(errors)])
            continue
        sbody.append(
            [
                QUERY_LABELS[t],
                f"{statistics.median(good) * 1000:,.0f}",
                f"{p95(good) * 1000:,.0f}",
                f"{min(good) * 1000:,.0f}",
                f"{max(good) * 1000:,.0f}",
                f"{rss:,.0f}",
                str(errors),
            ]
        )
    return per_query, (sheader, sbody, "lrrrrrr")


def _summary(
    queries: list[Query], results: dict[tuple[int, str], QueryResult], tool: str
) -> tuple[float, float] | None:
    """(median, p95) seconds over the queries, None if any query failed or did not run."""
    medians = [
        results[(i, tool)].median if (i, tool) in results else None for i in range(len(queries))
    ]
    if not medians or any(m is None for m in medians):
        return None
    good = [m for m in medians if m is not None]
    return statistics.median(good), p95(good)


def _verdicts(
    corp: Corpus,
    rows: list[IndexRow],
    queries: list[Query],
    results: dict[tuple[int, str], QueryResult],
) -> list[Verdict]:
    by_tool = {r.tool: r for r in rows}
    out: list[tuple[str, str, bool | None]] = []
    mv, mu = _rate(corp, by_tool.get("mailvault")), _rate(corp, by_tool.get("mu"))
    ratio = None if mv is None or mu is None else mv / mu
    out.append(
        (
            "index rate: mailvault import (store + parse + index) ≥ mu index",
            f"{fmt_int(mv or 0)} vs {fmt_int(mu or 0)} msg/s = {fmt_ratio(ratio)}",
            None if ratio is None else ratio >= 1.0,
        )
    )
    mv_only = _rate(corp, by_tool.get("mailvault-index"))
    ratio_only = None if mv_only is None or mu is None else mv_only / mu
    out.append(
        (
            "(for reference) mailvault index alone vs mu index",
            f"{fmt_int(mv_only or 0)} vs {fmt_int(mu or 0)} msg/s = {fmt_ratio(ratio_only)}",
            None if ratio_only is None else ratio_only >= 1.0,
        )
    )
    peaks = [
        max(r.m.max_rss_mb, r.pss_mb)
        for row in rows
        if row.tool.startswith("mailvault")
        for r in row.runs
    ]
    out.append(
        (
            f"memory: mailvault peak < {TARGET_RSS_MB:.0f} MB (larger of RSS and all-process PSS)",
            f"{max(peaks):,.0f} MB" if peaks else "–",
            None if not peaks else max(peaks) < TARGET_RSS_MB,
        )
    )
    mvq, nmq, muq = (_summary(queries, results, t) for t in ("mailvault", "notmuch", "mu"))
    out.append(
        (
            "median query latency: mailvault ≤ notmuch",
            "–"
            if mvq is None or nmq is None
            else f"{mvq[0] * 1000:,.0f} vs {nmq[0] * 1000:,.0f} ms = {mvq[0] / nmq[0]:.2f}×",
            None if mvq is None or nmq is None else mvq[0] <= nmq[0],
        )
    )
    peer_p95 = [s[1] for s in (nmq, muq) if s is not None]
    out.append(
        (
            "p95 query latency: mailvault < notmuch and < mu",
            "–"
            if mvq is None or not peer_p95
            else f"{mvq[1] * 1000:,.0f} vs "
            + " / ".join(f"{p * 1000:,.0f}" for p in peer_p95)
            + f" ms = {mvq[1] / min(peer_p95):.2f}× the faster peer",
            None if mvq is None or len(peer_p95) < 2 else mvq[1] < min(peer_p95),
        )
    )
    return out


def _report(
    opts: Options,
    corp: Corpus,
    rows: list[IndexRow],
    queries: list[Query],
    results: dict[tuple[int, str], QueryResult],
    qtools: list[str],
    machine: str,
    versions: dict[str, str],
    elapsed: float,
) -> Section:
    verdicts = _verdicts(corp, rows, queries, results)
    iheader, ibody, ialign = _index_table(corp, rows)
    (qheader, qbody, qalign), (sheader, sbody, salign) = _query_tables(queries, results, qtools)
    failures = [f"- {r.label}: {e}" for r in rows for e in r.errors]
    failures += [
        f"- query {i + 1} ({QUERY_LABELS[t]}): {results[(i, t)].error}"
        for i in range(len(queries))
        for t in qtools
        if results[(i, t)].error
    ]
    ok = not failures
    runs = QUERY_RUNS_QUICK if opts.quick else QUERY_RUNS
    translations = markdown_table(
        ["#", "notmuch", "mu"],
        [[str(i + 1), f"`{q.notmuch}`", f"`{q.mu}`"] for i, q in enumerate(queries)],
        "lll",
    )
    md = [
        f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (" — **quick run, not the reference size**" if opts.quick else "")
        + f"; whole benchmark {elapsed / 60:.1f} min (corpus written in {corp.seconds:.0f} s).",
        "",
        f"- Corpus: {corp.describe()}.",
        f"- Machine: {machine}.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"- Index runs: each tool {opts.repeat}× into a fresh store, best run reported; "
        f"queries: 1 warm-up + {runs} runs each, median per query. MB = 10^6 bytes; "
        "RSS/PSS in MiB.",
        "",
        verdict_table(verdicts, "lll"),
        "",
        "### Indexing",
        "",
        markdown_table(iheader, ibody, ialign),
        "",
        "### Query latency (whole process, ms)",
        "",
        markdown_table(sheader, sbody, salign),
        "",
        "### Per query",
        "",
        "Hits: mv = `mailvault search --count`, nm = `notmuch count` (messages), mu = lines of "
        "`mu find`, gen = the generator's record (exact for header fields and dates; "
        "`≥` counts only message bodies, while the tools also search subjects, addresses and "
        "attachments). ms: median wall time of the process.",
        "",
        markdown_table(qheader, qbody, qalign),
        "",
        "The same queries for the peers:",
        "",
        translations,
    ]
    if missing_tools():
        md += ["", "Not installed, so not measured: " + ", ".join(missing_tools()) + "."]
    if failures:
        md += ["", "Failures:", "", *failures]
    console = [
        f"search benchmark: {corp.describe()}",
        machine,
        "",
        text_table(iheader, ibody, ialign),
        "",
        text_table(sheader, sbody, salign),
        "",
        text_table(qheader, qbody, qalign),
        "",
        *verdict_lines(verdicts),
        *failures,
    ]
    return Section(NAME, "\n".join(md) + "\n", "\n".join(console), ok)
