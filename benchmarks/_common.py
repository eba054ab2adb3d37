"""Shared pieces of the benchmarks: options, measured child processes, formatting.

Every measured program runs in a fresh child process under GNU ``time`` (``/usr/bin/time``):
wall time is taken here around spawn and reap, peak RSS is the child's ``ru_maxrss`` (the
largest resident set of the tool or any descendant it waited for), CPU time is user + system.  Nothing else runs in the benchmark process meanwhile except, for the
delayed conditions, the threads of the delaying proxy that every tool goes through alike.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# ``ru_maxrss`` of a child reaped here would include this (large) process: Linux carries the
# pre-exec high-water mark of a forked child over the exec.  GNU time is small, so its child's
# figure is the tool's own; without it the numbers are an upper bound.
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


@dataclass
class Options:
    """What ``python -m benchmarks.run`` was asked to do; each benchmark reads what it needs."""

    count: int
    seed: int
    quick: bool
    repeat: int
    workdir: Path
    keep_workdir: bool = False
    profile: Path | None = None
    rtt_lockstep_count: int = 1000
    only_tools: list[str] = field(default_factory=list)
    skip_tools: list[str] = field(default_factory=list)


@dataclass
class Measurement:
    """One finished child process."""

    argv: list[str]
    seconds: float
    max_rss_kb: int
    cpu_seconds: float
    returncode: int
    stdout: str
    stderr: str
    host_cpu_seconds: float = 0.0  # CPU of this process meanwhile (the delay proxy's threads)

    @property
    def max_rss_mb(self) -> float:
        return self.max_rss_kb / 1024

    def failure(self) -> str:
        """A short description of a non-zero exit, for the report."""
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return f"exit {self.returncode}: " + (lines[-1].strip() if lines else "no output")


@dataclass
class Section:
    """What a benchmark hands back: Markdown for docs/benchmarks.md and a console summary."""

    name: str
    markdown: str
    console: str
    ok: bool = True


def run_measured(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600.0,
    log_dir: Path,
) -> Measurement:
    """Run ``argv`` to completion in a fresh process; return its time, peak RSS and output.

    stdout and stderr go to files (no pipe can fill up and stall the child); the child gets
    its own process group, so a timeout kills it and anything it started.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path, usage_path = log_dir / "stdout", log_dir / "stderr", log_dir / "usage"
    wrapped = [GNU_TIME, "-f", "%M %U %S", "-o", str(usage_path), *argv] if GNU_TIME else argv
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        host_cpu = _own_cpu()
        started = time.perf_counter()
        proc = subprocess.Popen(
            wrapped,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        killer = threading.Timer(timeout, _kill_group, args=(proc.pid,))
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: take the tool down with us
            _kill_group(proc.pid)
            os.wait4(proc.pid, 0)
            raise
        finally:
            killer.cancel()
        seconds = time.perf_counter() - started
    host_cpu = _own_cpu() - host_cpu
    proc.returncode = os.waitstatus_to_exitcode(status)
    max_rss_kb, cpu = int(usage.ru_maxrss), usage.ru_utime + usage.ru_stime
    if GNU_TIME:
        with contextlib.suppress(OSError, ValueError, IndexError):
            rss, user, system = usage_path.read_text().split("\n")[-2].split()
            max_rss_kb, cpu = int(rss), float(user) + float(system)
    return Measurement(
        argv=argv,
        seconds=seconds,
        max_rss_kb=max_rss_kb,
        cpu_seconds=cpu,
        returncode=proc.returncode,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        host_cpu_seconds=host_cpu,
    )


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def scratch_filesystem(directory: Path, size_gib: int = 8) -> Iterator[tuple[Path, str]]:
    """A fresh ext4 filesystem (a loop-mounted sparse image) for what the tools write.

    Why: on a long-lived machine, file creation on the root filesystem costs 20-700 us of
    kernel time depending on how many files were deleted there lately (ext4 skips recently
    freed inodes); tools that write a file per message would be measured against the
    machine's history.  A new filesystem per run gives every tool the same, normal disk;
    fsync still goes through the loop device to the real disk.  Without root, mkfs.ext4 or
    a loop device (or with BENCH_NO_SCRATCH_FS=1) it falls back to ``directory`` itself.
    Yields (path to write under, description for the report).
    """
    image, mount_point = directory / "scratch.ext4", directory / "scratch"
    fallback = (directory, f"the filesystem of {directory} (no fresh scratch filesystem)")
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or os.environ.get("BENCH_NO_SCRATCH_FS"):
        yield fallback
        return
    try:
        mount_point.mkdir(parents=True, exist_ok=True)
        with open(image, "wb") as f:
            f.truncate(size_gib << 30)
        # Inode tables and journal written now, not by a kernel thread during the runs.
        mkfs = ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]
        subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"note: no scratch filesystem ({exc}); writing under {directory}")
        with contextlib.suppress(OSError):
            image.unlink()
        yield fallback
        return
    try:
        yield (
            mount_point,
            f"a fresh ext4 filesystem (a {size_gib} GiB loop image) made for this run",
        )
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
        with contextlib.suppress(OSError):
            image.unlink()


def flush_disks() -> None:
    """Write back every dirty page before a measurement, so nobody pays for the previous run."""
    os.sync()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def tool_version(argv: list[str]) -> str:
    """First meaningful line of ``tool --version`` (fetchmail warns about root first)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    for line in (done.stdout + "\n" + done.stderr).splitlines():
        line = line.strip()
        if line and "WARNING" not in line:
            return line
    return "unknown"


def machine_description() -> str:
    """CPU model, cores, memory, kernel and load, for the results header."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
                break
    except OSError:
        pass
    load = os.getloadavg()[0]
    return (
        f"{model}, {os.cpu_count()} cores{mem}, Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average {load:.2f} at start"
    )


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def markdown_table(header: list[str], rows: list[list[str]], align: str) -> str:
    """A Markdown table; ``align`` has one of ``l``/``r`` per column."""
    marks = [":---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


Verdict = tuple[str, str, bool | None]  # target, what was measured, met (None: not measured)
_MARK = {True: "met", False: "**missed**", None: "not measured"}


def verdict_table(verdicts: list[Verdict], align: str = "lll") -> str:
    """The targets table of a results section (``align`` as for :func:`markdown_table`)."""
    rows = [[target, measured, _MARK[met]] for target, measured, met in verdicts]
    return markdown_table(["target", "measured", "verdict"], rows, align)


def verdict_lines(verdicts: list[Verdict]) -> list[str]:
    """The same verdicts for the console."""
    return [f"{t}: {v} -> {_MARK[met].strip('*')}" for t, v, met in verdicts]


def text_table(header: list[str], rows: list[list[str]], align: str) -> str:
    """The same table for a terminal."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if a == "l" else c.rjust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
