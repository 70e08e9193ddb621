"""Compatibility: ipykernel's own test suite with and without ipyproctrack auto-loaded.

Usage::

    .venv/bin/python benchmarks/compat_ipykernel.py [--workdir DIR] [--keep] [-- PYTEST ARGS]

What it does, all under ``--workdir`` (default ``build/compat``):

1. makes a virtual environment with the ipykernel version installed in ``.venv`` (the one
   users get with ipyproctrack), ipykernel's ``test`` extra, and this checkout of
   ipyproctrack;
2. downloads ipykernel's sdist of that version from the package index (its tests live
   there) and unpacks it;
3. runs its suite twice: once plain, once with an IPython profile that auto-loads the
   extension in every kernel (``c.InteractiveShellApp.extensions = ["ipyproctrack"]``),
   each run with its own ``IPYTHONDIR``;
4. compares the outcome of every test. Tests whose outcomes differ are run again in both
   modes (ipykernel has a few timing-sensitive tests); a difference that repeats is a
   real one.

It exits 0 when both runs agree and the loaded run really loaded the extension (every
kernel that started in that run leaves a marker file; at least one must exist).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROFILE = """\
c.InteractiveShellApp.extensions = ["ipyproctrack"]
c.InteractiveShellApp.exec_lines = [
    "import os as _o, ipyproctrack as _i\\n"
    "if 'ipyproctrack' in get_ipython().extension_manager.loaded:\\n"
    "    open(_o.path.join(_o.environ['IPYPROCTRACK_COMPAT_MARKS'], str(_o.getpid())), 'w').close()"
]
"""


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=False, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def _ipykernel_version() -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import ipykernel; print(ipykernel.__version__)"],
        check=True, text=True, capture_output=True,
    )
    return out.stdout.strip()


def _setup(workdir: Path, version: str) -> tuple[Path, Path]:
    venv = workdir / "venv"
    python = venv / "bin" / "python"
    stamp = venv / f".ready-{version}"
    if not stamp.exists():
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)]).check_returncode()
        # ipykernel's "test" extra (from its pyproject; the wheel does not declare it)
        test_extra = ["pytest>=7,<10", "flaky", "ipyparallel", "psutil>=5.7",
                      "pytest-asyncio>=0.23.5", "pytest-timeout"]
        _run([str(python), "-m", "pip", "install", "-q", f"ipykernel=={version}",
              *test_extra, str(REPO)]).check_returncode()
        stamp.touch()
    src = workdir / f"ipykernel-{version}"
    if not (src / "tests").is_dir():
        dl = workdir / "sdist"
        _run([str(python), "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
              "ipykernel", f"ipykernel=={version}", "-d", str(dl)]).check_returncode()
        with tarfile.open(next(dl.glob("ipykernel-*.tar.gz"))) as tar:
            tar.extractall(workdir, filter="data")
    return python, src


def _outcomes(junit: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case]
        if "failure" in kinds or "error" in kinds:
            out[name] = "failed"
        elif "skipped" in kinds:
            out[name] = "skipped"
        else:
            out[name] = "passed"
    return out


def _suite(python: Path, src: Path, workdir: Path, *, loaded: bool, args: list[str],
           only: list[str] | None = None) -> tuple[dict[str, str], int]:
    mode = "loaded" if loaded else "plain"
    ipdir = Path(tempfile.mkdtemp(prefix=f"ipython-{mode}-", dir=workdir))
    marks = Path(tempfile.mkdtemp(prefix=f"marks-{mode}-", dir=workdir))
    if loaded:
        profile = ipdir / "profile_default"
        profile.mkdir(parents=True)
        (profile / "ipython_config.py").write_text(PROFILE)
    junit = workdir / f"junit-{mode}.xml"
    # ipykernel's tests leave temporary kernelspec folders and connection files
    # (kernel-<pid>.json, in the runtime directory) behind: keep them in our workdir
    scratch = Path(tempfile.mkdtemp(prefix=f"tmp-{mode}-", dir=workdir))
    env = {**os.environ, "IPYTHONDIR": str(ipdir), "IPYPROCTRACK_COMPAT_MARKS": str(marks),
           "TMPDIR": str(scratch), "JUPYTER_RUNTIME_DIR": str(scratch / "runtime")}
    env.pop("PYTHONPATH", None)
    # our pytest plugin stays out of both runs: only the IPython extension differs
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:ipyproctrack",
           "-o", "addopts=",
           "-o", "asyncio_mode=auto",
           "-o", "asyncio_default_fixture_loop_scope=function", "--timeout=60",
           f"--junitxml={junit}", *args]
    cmd += only if only else ["tests"]
    junit.unlink(missing_ok=True)
    done = _run(cmd, cwd=src, env=env, stdout=subprocess.DEVNULL)
    if not junit.exists():
        raise SystemExit(f"ipykernel's suite did not run ({mode}, exit {done.returncode})")
    outcomes = _outcomes(junit)
    kernels = len(list(marks.iterdir()))
    for folder in (ipdir, marks, scratch):
        shutil.rmtree(folder, ignore_errors=True)
    return outcomes, kernels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "build" / "compat")
    parser.add_argument("--keep", action="store_true", help="keep the venv and sources")
    parser.add_argument("pytest_args", nargs="*")
    opts = parser.parse_args()
    workdir: Path = opts.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    version = _ipykernel_version()
    python, src = _setup(workdir, version)
    plain, _ = _suite(python, src, workdir, loaded=False, args=opts.pytest_args)
    loaded, kernels = _suite(python, src, workdir, loaded=True, args=opts.pytest_args)
    differ = sorted(n for n in plain.keys() | loaded.keys() if plain.get(n) != loaded.get(n))
    if differ:  # run those again in both modes: a real difference repeats
        print(f"{len(differ)} test(s) differ; running them again in both modes", flush=True)
        again_plain, _ = _suite(python, src, workdir, loaded=False, args=opts.pytest_args,
                                only=_node_ids(src, differ))
        again_loaded, _ = _suite(python, src, workdir, loaded=True, args=opts.pytest_args,
                                 only=_node_ids(src, differ))
        differ = [n for n in differ if again_plain.get(n) != again_loaded.get(n)]
    counts = {m: _count(o) for m, o in (("plain", plain), ("loaded", loaded))}
    print(f"ipykernel {version}: plain {counts['plain']}; with ipyproctrack "
          f"{counts['loaded']}; {kernels} kernel(s) loaded the extension")
    for name in differ:
        print(f"  DIFFERS: {name}: plain {plain.get(name)}, loaded {loaded.get(name)}")
    if not opts.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    if kernels == 0:
        print("FAILED: no kernel loaded the extension; the comparison proves nothing")
        return 1
    if differ:
        print(f"FAILED: {len(differ)} test(s) behave differently with the extension")
        return 1
    print("OK: identical results with and without the extension")
    return 0


def _node_ids(src: Path, names: list[str]) -> list[str]:
    """junit 'tests.test_x.Class::name' back to pytest node ids (the longest prefix that
    is a file of the suite is the module)."""
    ids = []
    for name in names:
        classname, test = name.split("::", 1)
        parts = classname.split(".")
        for i in range(len(parts), 0, -1):
            path = "/".join(parts[:i]) + ".py"
            if (src / path).is_file():
                ids.append("::".join([path, *parts[i:], test]))
                break
    return ids


def _count(outcomes: dict[str, str]) -> str:
    kinds = ("passed", "failed", "skipped")
    return ", ".join(f"{sum(1 for v in outcomes.values() if v == k)} {k}" for k in kinds)


if __name__ == "__main__":
    sys.exit(main())
