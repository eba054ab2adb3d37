"""export: ``mailvault export`` against the copy limit, and ``mailvault import`` against notmuch.

The corpus of the search benchmark (:func:`benchmarks.search.corpus`: default 10,000 generated
messages as a Maildir, written once per run) is imported into a fresh vault with ``mailvault
import --no-index`` (zstd-compressed blobs, as fetch stores them); that vault is exported, each
run in a fresh process under GNU time into a fresh target:

* ``mailvault export --format maildir`` (default ``--line-endings lf``) and with
  ``--line-endings crlf`` (the exact stored bytes);
* ``mailvault export --format mbox`` (lf, mboxrd) and with ``--line-endings crlf``.

Every export writes its manifest (the default) and is made durable by mailvault itself (Maildir
files: one syncfs per batch before their renames; the mbox: fsynced, then linked into place).  The
physical limit, measured in the same run: ``cp -r`` of the source Maildir (the same uncompressed
bytes, one file per message) and ``cp`` of one file holding all of them (for the mbox), each
followed by ``sync``.  Rates are over the messages' size as stored (CRLF), the same number of
bytes for every row; an lf export writes about 2 % fewer.

Import side: ``mailvault import --no-index`` (store only), ``mailvault import`` (store, parse,
index) and ``notmuch new`` (index in place) of the same Maildir, each into a fresh store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._common import (
    Measurement,
    Options,
    Section,
    Verdict,
    fmt_int,
    machine_description,
    markdown_table,
    remove_tree,
    scratch_filesystem,
    text_table,
    tool_version,
    verdict_lines,
    verdict_table,
)
from benchmarks.search import (
    Corpus,
    bench_env,
    corpus,
    maildir_count,
    mailvault_argv,
    measure_tree,
    notmuch_config,
    notmuch_count,
    prepare_python,
)

NAME = "export"
TITLE = "Export: mailvault vs cp; import vs notmuch new"

# Target from issue 4: export within 2x the time of copying the same bytes.
TARGET_VS_COPY = 2.0

EXPORTS = ("cp-maildir", "maildir", "maildir-crlf", "cp-file", "mbox", "mbox-crlf")
IMPORTS = ("import-store", "import-index", "notmuch")
LABELS = {
    "cp-maildir": "copy limit: `cp -r` Maildir + `sync`",
    "maildir": "mailvault export --format maildir",
    "maildir-crlf": "mailvault export --format maildir --line-endings crlf",
    "cp-file": "copy limit: `cp` one file + `sync`",
    "mbox": "mailvault export --format mbox",
    "mbox-crlf": "mailvault export --format mbox --line-endings crlf",
    "import-store": "mailvault import --no-index",
    "import-index": "mailvault import (+ parse, index)",
    "notmuch": "notmuch new",
}
LIMIT_OF = {  # export -> the copy it is held against
    "maildir": "cp-maildir",
    "maildir-crlf": "cp-maildir",
    "mbox": "cp-file",
    "mbox-crlf": "cp-file",
}


@dataclass
class Run:
    m: Measurement
    pss_mb: float
    written: int  # bytes the run wrote (as the tool reports or on disk)


@dataclass
class Row:
    tool: str
    runs: list[Run] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return LABELS[self.tool]

    @property
    def best(self) -> Run | None:
        good = [r for r in self.runs if r.m.returncode == 0]
        return min(good, key=lambda r: r.m.seconds) if good and not self.errors else None

    def seconds(self) -> float | None:
        best = self.best
        return None if best is None else best.m.seconds


def available() -> str | None:
    if shutil.which("cp") is None or shutil.which("sync") is None:
        return "cp or sync not found"
    return None


class _Bench:
    def __init__(self, opts: Options, corp: Corpus, work: Path) -> None:
        self.opts = opts
        self.corpus = corp
        self.work = work
        self.rows = {tool: Row(tool) for tool in (*EXPORTS, *IMPORTS)}
        self.runs = 0
        self.vault: Path | None = None  # the export source: the last good --no-index import
        self.one_file = self.work / "source" / "all-messages"

    def say(self, text: str) -> None:
        print(text, flush=True)

    def fresh(self, tool: str) -> Path:
        self.runs += 1
        store = self.work / "runs" / f"{self.runs:03d}-{tool}"
        remove_tree(store)
        store.mkdir(parents=True)
        return store

    def measure(
        self,
        tool: str,
        argv: list[str],
        store: Path,
        check: Callable[[Measurement], tuple[int, int]],
        env: dict[str, str] | None = None,
    ) -> bool:
        """Run one measured process; ``check`` returns (messages, bytes written) or raises."""
        m, pss = measure_tree(argv, env=env or bench_env(), log_dir=store / "log")
        row = self.rows[tool]
        error = None
        written = 0
        if m.returncode != 0:
            error = m.failure()
        else:
            try:
                count, written = check(m)
                if count != self.corpus.count:
                    error = f"{count:,} of {self.corpus.count:,} messages"
            except (OSError, ValueError, KeyError, TypeError) as exc:
                error = f"unreadable result: {exc}"
        row.runs.append(Run(m, pss, written))
        if error is not None:
            row.errors.append(f"{error} after {m.seconds:.0f} s")
        n, mb = self.corpus.count, self.corpus.octets / 1e6
        self.say(
            f"  {tool:13} {m.seconds:8.2f} s {n / m.seconds:8,.0f} msg/s {mb / m.seconds:7.1f} MB/s "
            f"{m.max_rss_mb:6.1f} MB RSS {pss:6.1f} MB PSS(all) {m.cpu_seconds:6.1f} s CPU  "
            + ("ok" if error is None else f"FAILED ({error})")
        )
        return error is None

    # -- import side ---------------------------------------------------------------------

    def mailvault_import(self, *, index: bool) -> None:
        tool = "import-index" if index else "import-store"
        store = self.fresh(tool)
        vault = store / "vault"
        subprocess.run(
            mailvault_argv(vault, "init"), check=True, env=bench_env(), capture_output=True
        )
        argv = mailvault_argv(vault, "import", str(self.corpus.maildir), "--format", "maildir")
        argv += ["--json"] + ([] if index else ["--no-index"])

        def check(m: Measurement) -> tuple[int, int]:
            report = json.loads(m.stdout)
            if index and (report.get("index_error") or not report.get("index")):
                raise ValueError(f"index error: {report.get('index_error')}")
            return int(report["imported"]), int(report["bytes"])

        if self.measure(tool, argv, store, check) and not index:
            old, self.vault = self.vault, vault
            if old is not None and not self.opts.keep_workdir:
                remove_tree(old)
        elif not self.opts.keep_workdir:
            remove_tree(vault)

    def notmuch(self) -> None:
        store = self.fresh("notmuch")
        config = notmuch_config(store / "config", self.corpus.maildir, store / "db")
        env = bench_env(NOTMUCH_CONFIG=str(config), HOME=str(store))

        def check(m: Measurement) -> tuple[int, int]:
            return notmuch_count(env, "*"), 0

        self.measure("notmuch", ["notmuch", "new", "--quiet"], store, check, env)
        if not self.opts.keep_workdir:
            remove_tree(store / "db")

    # -- export side ---------------------------------------------------------------------

    def copy(self, tool: str) -> None:
        store = self.fresh(tool)
        if tool == "cp-maildir":
            src, dst = self.corpus.maildir, store / "Maildir"
            script = 'cp -r -- "$1" "$2" && sync'

            def check(m: Measurement) -> tuple[int, int]:
                return maildir_count(dst), _tree_bytes(dst)

        else:
            src, dst = self.one_file, store / "all-messages"
            script = 'cp -- "$1" "$2" && sync'

            def check(m: Measurement) -> tuple[int, int]:
                size = dst.stat().st_size
                return (self.corpus.count if size == self.corpus.octets else -1), size

        self.measure(tool, ["sh", "-c", script, "sh", str(src), str(dst)], store, check)
        if not self.opts.keep_workdir:
            remove_tree(dst)

    def export(self, tool: str) -> None:
        if self.vault is None:
            return
        store = self.fresh(tool)
        fmt = "maildir" if tool.startswith("maildir") else "mbox"
        out = store / ("Maildir" if fmt == "maildir" else "out.mbox")
        argv = mailvault_argv(self.vault, "export", "--format", fmt, "--out", str(out), "--json")
        if tool.endswith("-crlf"):
            argv += ["--line-endings", "crlf"]

        def check(m: Measurement) -> tuple[int, int]:
            summary = json.loads(m.stdout)
            if not summary.get("ok"):
                raise ValueError(f"export not ok: {summary.get('warnings')}")
            count = maildir_count(out) if fmt == "maildir" else int(summary["count"])
            return min(count, int(summary["count"])), int(summary["total_bytes"])

        self.measure(tool, argv, store, check)
        if not self.opts.keep_workdir:
            remove_tree(store)

    def write_one_file(self) -> None:
        """All messages of the Maildir concatenated (not timed): the mbox's copy limit."""
        self.one_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.one_file, "wb") as out:
            for name in sorted(os.listdir(self.corpus.maildir / "new")):
                with open(self.corpus.maildir / "new" / name, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def run(opts: Options) -> Section:
    opts.workdir.mkdir(parents=True, exist_ok=True)
    with scratch_filesystem(opts.workdir / "export-fs") as (root, disk):
        return _run(opts, root, disk)


def _run(opts: Options, root: Path, disk: str) -> Section:
    started = time.monotonic()
    machine = machine_description()
    prepare_python(opts)
    corp = corpus(opts)
    bench = _Bench(opts, corp, root / "export")
    remove_tree(bench.work)
    bench.work.mkdir(parents=True)
    bench.write_one_file()
    with_notmuch = shutil.which("notmuch") is not None and "notmuch" not in opts.skip_tools

    print(f"export: importing, {opts.repeat} run(s) of each", flush=True)
    load_import = os.getloadavg()[0]
    for _ in range(opts.repeat):
        bench.mailvault_import(index=False)
        bench.mailvault_import(index=True)
        if with_notmuch:
            bench.notmuch()
    print(f"export: exporting, {opts.repeat} run(s) of each", flush=True)
    load_export = os.getloadavg()[0]
    for _ in range(opts.repeat):
        for tool in EXPORTS:
            if tool.startswith("cp-"):
                bench.copy(tool)
            else:
                bench.export(tool)
    stored = _tree_bytes(bench.vault / "objects") if bench.vault else 0
    versions = {
        "notmuch": tool_version(["notmuch", "--version"]).removeprefix("notmuch "),
        "coreutils": tool_version(["cp", "--version"]).split()[-1],
    }
    if not opts.keep_workdir:
        remove_tree(bench.work)
    elapsed = time.monotonic() - started
    machine += (
        f"; load average {load_import:.2f} before importing, {load_export:.2f} before exporting"
        f"; every vault, database, copy and export on {disk}, the source Maildir (only read) "
        "on the root disk"
    )
    return _report(opts, corp, bench.rows, stored, machine, versions, elapsed)


# -- reporting -----------------------------------------------------------------------------------


def _table(
    corp: Corpus, rows: list[Row], against: Callable[[Row], Row | None], vs: str
) -> tuple[list[str], list[list[str]], str]:
    header = ["tool", "best s", "msg/s", "MB/s", "written MB", "peak RSS MB"]
    header += ["peak PSS MB (all procs)", "CPU s", vs, "runs (s)"]
    body = []
    for row in rows:
        runs = ", ".join(f"{r.m.seconds:.1f}" for r in row.runs)
        best = row.best
        if best is None:
            body.append([row.label, "failed (below)", *[""] * 7, runs])
            continue
        ref = against(row)
        ref_s = ref.seconds() if ref is not None else None
        body.append(
            [
                row.label,
                f"{best.m.seconds:.2f}",
                fmt_int(corp.count / best.m.seconds),
                f"{corp.octets / 1e6 / best.m.seconds:,.1f}",
                f"{best.written / 1e6:,.1f}" if best.written else "–",
                f"{best.m.max_rss_mb:,.0f}",
                f"{best.pss_mb:,.0f}",
                f"{best.m.cpu_seconds:,.1f}",
                "–" if ref_s is None else f"{best.m.seconds / ref_s:.2f}×",
                runs,
            ]
        )
    return header, body, "lrrrrrrrrl"


def _report(
    opts: Options,
    corp: Corpus,
    rows: dict[str, Row],
    stored: int,
    machine: str,
    versions: dict[str, str],
    elapsed: float,
) -> Section:
    exports = [rows[t] for t in EXPORTS if rows[t].runs]
    imports = [rows[t] for t in IMPORTS if rows[t].runs]
    eheader, ebody, ealign = _table(
        corp, exports, lambda r: rows.get(LIMIT_OF.get(r.tool, r.tool)), "time ÷ copy"
    )
    iheader, ibody, ialign = _table(corp, imports, lambda r: rows["notmuch"], "time ÷ notmuch")
    verdicts: list[Verdict] = []
    for tool in ("maildir", "mbox"):
        mine, limit = rows[tool].seconds(), rows[LIMIT_OF[tool]].seconds()
        ratio = None if mine is None or limit is None else mine / limit
        verdicts.append(
            (
                f"{tool} export (default lf) within {TARGET_VS_COPY:.0f}× the time of "
                f"{'`cp -r` Maildir' if tool == 'maildir' else '`cp` one file'} + `sync`",
                "–" if ratio is None else f"{mine:.2f} s vs {limit:.2f} s = {ratio:.2f}×",
                None if ratio is None else ratio <= TARGET_VS_COPY,
            )
        )
    failures = [f"- {r.label}: {e}" for r in rows.values() for e in r.errors]
    vault_line = (
        f"- Vault: `mailvault import --no-index` of that Maildir; blobs zstd-compressed, "
        f"{stored / 1e6:,.1f} MB in `objects/` ({stored / corp.octets:.0%} of the mail)."
        if stored
        else "- Vault: not built (see failures)."
    )
    md = [
        f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (" — **quick run, not the reference size**" if opts.quick else "")
        + f"; whole benchmark {elapsed / 60:.1f} min.",
        "",
        f"- Corpus: {corp.describe()}.",
        vault_line,
        f"- Machine: {machine}.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"- Runs: each {opts.repeat}× into a fresh target, best reported. MB/s = the messages' "
        "stored size (the same bytes for every row) over the wall time; MB = 10^6 bytes; "
        "RSS/PSS in MiB.",
        "",
        verdict_table(verdicts, "lll"),
        "",
        "### Export",
        "",
        markdown_table(eheader, ebody, ealign),
        "",
        "### Import",
        "",
        markdown_table(iheader, ibody, ialign),
    ]
    if failures:
        md += ["", "Failures:", "", *failures]
    console = [
        f"export benchmark: {corp.describe()}",
        machine,
        "",
        text_table(eheader, ebody, ealign),
        "",
        text_table(iheader, ibody, ialign),
        "",
        *verdict_lines(verdicts),
        *failures,
    ]
    return Section(NAME, "\n".join(md) + "\n", "\n".join(console), not failures)
