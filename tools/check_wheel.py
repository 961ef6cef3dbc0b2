"""The package is self-contained: build a wheel, install it in a fresh venv and call it from outside the clone.

    python tools/check_wheel.py [--keep DIR]

Steps: `pip wheel --no-build-isolation --no-deps` in the repository (objects reused from build/temp, so after
`make install` this only links); a fresh venv that sees the calling interpreter's packages (torch, pip) behind
its own; `pip install --no-index --no-deps --ignore-installed` of the wheel into it; then, in an empty temporary
directory: import fastsample from the venv, check that its declared dependencies are installed, that the
compiled extension loaded, and call `fastsample.sample`. Exits non-zero with the failing step's output on any
failure.

The calling interpreter may itself be a venv (CI's, or a user's): `venv --system-site-packages` would see the
*base* interpreter's packages instead, where torch may be missing. So the fresh venv gets a .pth file naming
the caller's site-packages folders instead. A .pth line only appends a folder to sys.path (the .pth files in
it are not run), so an editable install of fastsample in the caller stays invisible, and the venv's own
site-packages, where the wheel goes, comes first.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs in the venv, from a directory outside the clone: the repository's fastsample/ cannot shadow the wheel.
SMOKE = """
import os, sys, torch, fastsample
from fastsample import _ops
from fastsample.__main__ import main
here = os.path.dirname(fastsample.__file__)
assert here.startswith(sys.prefix), f"fastsample imported from {here}, not from the venv {sys.prefix}"
from importlib.metadata import requires, version
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for line in requires("fastsample"):
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate({"extra": ""}):
        assert req.specifier.contains(version(req.name), prereleases=True), f"{req}: {version(req.name)} installed"
assert _ops.AVAILABLE, f"the wheel's extension did not load: {getattr(_ops, 'IMPORT_ERROR', '')}"
logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
tokens = fastsample.sample(logits, temperature=0.8, top_k=50, top_p=0.9, seed=1)
assert tokens.dtype == torch.int64 and tokens.shape == (4,) and bool(((tokens >= 0) & (tokens < 1000)).all())
assert torch.equal(tokens, fastsample.sample(logits, temperature=0.8, top_k=50, top_p=0.9, seed=1, backend="torch"))
assert main(["bench"]) == 2  # the benchmarks stay in the repository
print(f"wheel ok: fastsample {fastsample.__version__} from {here}, tokens {tokens.tolist()}")
"""


def run(step: str, cmd: list[str], cwd: str) -> None:
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    print(f"check-wheel: {step}: {time.perf_counter() - start:.1f} s", flush=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-4000:])
        raise SystemExit(f"check-wheel: {step} failed (exit {res.returncode})")
    if step == "smoke test":
        print(res.stdout.strip())


def _see_callers_packages(python: str) -> None:
    """Make the calling interpreter's site-packages (and its base's, if it sees those) visible to `python`."""
    folders = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "_callers_packages.pth"), "w") as f:
        f.write("".join(f"{p}\n" for p in folders))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="work in this directory and keep it (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fastsample-wheel-") as tmp:
        work = os.path.abspath(args.keep) if args.keep else tmp
        os.makedirs(work, exist_ok=True)
        dist, venv, outside = (os.path.join(work, d) for d in ("dist", "venv", "outside"))
        os.makedirs(outside, exist_ok=True)
        run("build wheel", [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                            "-w", dist, "."], cwd=ROOT)
        wheels = glob.glob(os.path.join(dist, "fastsample-*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"check-wheel: expected one wheel in {dist}, found {wheels}")
        # Without its own pip: ensurepip would also put an old setuptools into the venv, shadowing the caller's
        # one that torch requires; the caller's pip (seen through the .pth file) installs into the venv.
        run("fresh venv", [sys.executable, "-m", "venv", "--without-pip", venv], cwd=work)
        python = os.path.join(venv, "bin", "python")
        _see_callers_packages(python)
        # --ignore-installed: the caller's own fastsample (an editable install, say) is visible to pip here and
        # must not count as this wheel being installed already.
        run("install wheel", [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--ignore-installed",
                              wheels[0]], cwd=outside)
        run("smoke test", [python, "-c", SMOKE], cwd=outside)


if __name__ == "__main__":
    main()
