"""Per-tree resource time series (issue 10): real processes, one sampler thread."""

from __future__ import annotations

import itertools
import os
import stat
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _procs import until

from ipyproctrack import MetricsSample, PortReady, Tracker
from ipyproctrack._engine.metrics import PANDAS_HINT

MiB = 1 << 20

# Four busy loops of 0.5 CPU seconds each, then one process holding 80 MiB; sampled every
# 0.25 s, so that each phase spans a few samples. The loops' 2 CPU-seconds are the same
# however busy the machine is (a peak percentage is not: with two test runs at once the
# tree once peaked at 45% of a core).
BUSY_THEN_BIG = textwrap.dedent(f"""\
    busy='import time
    t = time.process_time()
    while time.process_time() - t < 0.5:
        pass'
    for i in 1 2 3 4; do {sys.executable} -c "$busy" & done
    wait
    exec {sys.executable} -c 'import time; b = b"x" * (80 << 20); time.sleep(1.5)'
""")
INTERVAL = 0.25


@pytest.mark.slow
def test_busy_loop_then_80_mib_show_in_the_samples(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    tracker = Tracker(log_dir=tmp_path / "logs", metrics_interval=INTERVAL)
    request.addfinalizer(tracker.close)
    proc = tracker.start(BUSY_THEN_BIG, name="busy")
    assert proc.wait(60) == 0
    assert until(proc.metrics_series.finished.is_set, 10)  # the empty tree was seen
    samples = proc.metrics()
    assert all(isinstance(s, MetricsSample) for s in samples)
    # CPU-seconds in the samples: each percentage covers the time since the sample before.
    # A loop's last slice before its exit is never sampled: up to a quarter of the 2 s.
    seen = sum(s.cpu_percent / 100 * (s.t - before)
               for before, s in zip([0.0] + [s.t for s in samples], samples, strict=False))
    assert 1.2 < seen < 2.6, (seen, samples)
    assert max(s.rss for s in samples) > 70 * MiB, samples
    assert max(s.processes for s in samples) >= 5, samples  # bash and four busy loops
    times = [s.t for s in samples]
    assert times == sorted(times) and len(set(times)) == len(times)
    # a tree is sampled at most once per half interval (a rule, not a timing)
    assert min(b - a for a, b in itertools.pairwise(times)) >= INTERVAL / 2
    assert samples[-1].processes == 0  # kept after the exit, with the end marked
    assert proc.metrics() == samples

    csv = proc.metrics_csv
    assert csv is not None and csv == proc.log_path.with_suffix(".metrics.csv")
    lines = csv.read_text().splitlines()
    assert lines[0] == "t,cpu_percent,rss,processes"
    assert len(lines) == len(samples) + 1
    assert int(lines[-1].split(",")[3]) == 0
    assert stat.S_IMODE(csv.stat().st_mode) == 0o600  # logs are private


@pytest.mark.perf
def test_samples_come_about_once_a_second(tracker: Tracker) -> None:
    proc = tracker.start("exec sleep 30", name="idle")
    assert until(lambda: len(proc.metrics()) >= 6, 15)
    times = [s.t for s in proc.metrics()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.8 < statistics.median(gaps) < 1.3, gaps
    assert times[0] < 1.6, times  # the first sample within about a second of the launch


def test_samples_are_kept_in_a_bounded_ring(tmp_path: Path) -> None:
    with Tracker(log_dir=tmp_path, metrics_interval=0.1, metrics_keep=0.5) as t:
        proc = t.start("exec sleep 30", name="short")
        assert until(lambda: len(proc.metrics()) >= 6 and proc.metrics()[0].t > 0.6, 15)
        assert len(proc.metrics()) <= 6  # 0.5 s / 0.1 s + 1
        # a stop writes the CSV too, once the tree is gone
        proc.stop(grace=0.5)
        assert until(proc.metrics_series.finished.is_set, 10)
        assert proc.metrics_csv is not None and proc.metrics_csv.exists()


def test_no_sampling_when_disabled(tmp_path: Path) -> None:
    with Tracker(log_dir=tmp_path, metrics_interval=None) as t:
        proc = t.start("exec sleep 30", name="quiet")
        proc.stop(grace=0.5)
        assert proc.metrics() == [] and proc.metrics_csv is None
        assert t._metrics.ticks == 0


def test_close_writes_the_metrics_of_running_trees(tmp_path: Path) -> None:
    t = Tracker(log_dir=tmp_path)
    proc = t.start("exec sleep 30", name="svc")
    assert until(lambda: proc.metrics(), 10)
    t.close(grace=0.5)
    assert proc.metrics_csv is not None
    rows = proc.metrics_csv.read_text().splitlines()
    assert len(rows) >= 2 and rows[-1].endswith(",0")  # its end, seen by the last tick


def test_the_csv_is_never_written_through_a_symlink(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    with Tracker(log_dir=logs) as t:
        proc = t.start("exec sleep 30", name="trap")
        assert proc.metrics_csv is not None
        proc.metrics_csv.symlink_to(victim)  # planted where the CSV will go
        assert until(lambda: proc.metrics(), 10)
        proc.stop(grace=0.5)
        assert until(proc.metrics_series.finished.is_set, 10)
    assert victim.read_text() == "keep me\n"
    assert "cannot write the metrics" in caplog.text
    assert proc.metrics()  # the samples stay in memory


def test_metrics_frame(tracker: Tracker) -> None:
    pandas = pytest.importorskip("pandas")
    proc = tracker.start("exec sleep 30", name="framed")
    assert until(lambda: len(proc.metrics()) >= 2, 10)
    frame = proc.metrics_frame()
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == ["t", "cpu_percent", "rss", "processes"]
    assert len(frame) >= 2 and (frame["processes"] >= 1).all()


def test_metrics_frame_without_pandas_names_the_extra(tmp_path: Path) -> None:
    code = textwrap.dedent("""\
        import sys
        sys.modules["pandas"] = None  # as if it were not installed
        from ipyproctrack import Tracker
        with Tracker() as t:
            p = t.start("exit 0", name="x")
            p.wait(10)
            try:
                p.metrics_frame()
            except ImportError as exc:
                print("ImportError:", exc)
        """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert f"ImportError: {PANDAS_HINT}" in run.stdout, run.stderr
    assert "ipyproctrack[examples]" in PANDAS_HINT


# --- the displays show the sampler's numbers (stats.py) -----------------------------------

SERVE_AND_SPIN = (f"{sys.executable} -c 'import time\nwhile True: time.sleep(0.001)' & "
                  f"exec {sys.executable} -m http.server --bind 127.0.0.1 $PORT")


def test_displays_show_the_newest_sample_and_sample_nothing_themselves(
        tracker: Tracker) -> None:
    """The widgets' numbers are the engine's newest sample: same count, CPU% and RSS, and
    the tree's listening port. Before the first sample the count and RSS come from a scan
    and CPU% is unknown; once the tree is gone, nothing is shown."""
    from ipyproctrack._notebook.stats import EMPTY_STATS, sample_trees

    proc = tracker.start(SERVE_AND_SPIN, name="web", port="auto",
                         ready=PortReady("{port}"), ready_timeout=20)
    early = proc.metrics_series.latest()
    if early is None:  # the sampler has not measured the tree yet: a scan fills in
        first = sample_trees([proc])[0]
        assert first.cpu_percent is None and first.rss is not None and first.count >= 1
    assert until(lambda: (s := proc.metrics_series.latest()) is not None
                 and s[0].processes == 2)
    # the sampler may add a sample between the reads: the one shown is one of the two
    before = proc.metrics_series.latest()
    shown = sample_trees([proc])[0]
    after = proc.metrics_series.latest()
    assert before is not None and after is not None
    assert (shown.count, shown.cpu_percent, shown.rss) in {
        (s.processes, s.cpu_percent, s.rss) for s, _ in (before, after)}
    assert shown.ports == (proc.port,)
    proc.stop(grace=1.0)
    # the exit predates every sample still in the ring: they are not trusted any more
    assert until(lambda: sample_trees([proc])[0] == EMPTY_STATS)
