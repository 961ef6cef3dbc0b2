"""FlashInfer for a GPU machine without network access: fetch here, install and warm up there.

The GPU machines this project is lent have no FlashInfer and cannot download; what a run needs must travel
with the working tree, which is limited to 64 MiB. flashinfer-python is a 100 MB wheel, almost all of it CUDA
sources of kernels that sampling never compiles. So:

- ``python tools/flashinfer_wheels.py fetch`` (here, with network) downloads flashinfer-python and
  apache-tvm-ffi (the only requirement missing on those machines; the rest of its imports are there) for
  CPython 3.12 into ``.whl/`` (git-ignored), and rewrites the FlashInfer wheel without the sources of modules
  other than sampling and top-k: its Python code stays whole, so ``import flashinfer`` works unchanged.
- ``make gpu-check`` there (tools/gpu_check.py) installs ``.whl/*.whl`` into a private folder when FlashInfer
  does not import, and compiles FlashInfer's sampling and top-k modules (FlashInfer builds its kernels with nvcc
  on first use) in the background while the extension builds, so that no timed call pays for a compilation.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".whl"
SITE = Path(tempfile.gettempdir()) / "fastsample-site"
CARRY_LIMIT = 60 << 20  # the device tool carries 64 MiB in all; leave room for the repository itself
# FlashInfer's JIT sources of the modules the benchmark calls (flashinfer/jit/sampling.py and jit/topk.py);
# the headers beside them in data/csrc are kept too.
KEEP_SOURCES = {"sampling.cu", "renorm.cu", "flashinfer_sampling_binding.cu", "topk.cu", "cub_topk.cu",
                "flashinfer_topk_binding.cu", "flashinfer_fast_topk_clusters_binding.cu"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")


SOURCE_SUFFIXES = (".cu", ".cuh", ".h", ".hpp", ".inl", ".c", ".cc", ".cpp")


def _keep(name: str) -> bool:
    """Whether a file of the FlashInfer wheel is needed: Python code, metadata and data files, the headers
    sampling and top-k include (data/include, data/cccl), and their sources in data/csrc; not the C++/CUDA
    sources of every other module."""
    parts = name.split("/")
    if parts[:2] != ["flashinfer", "data"]:
        return not name.endswith(SOURCE_SUFFIXES)
    if parts[2] in ("include", "cccl"):
        return True
    return parts[2] == "csrc" and len(parts) == 4 and (parts[3] in KEEP_SOURCES or parts[3].endswith(".h"))


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def trim(wheel: Path, out: Path) -> Path:
    """Writes ``wheel`` without the files ``_keep`` rejects into the folder ``out`` (same file name), with a
    RECORD that lists exactly what is left."""
    target = out / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        lines = []
        for info in src.infolist():
            if info.filename == record_name or not _keep(info.filename):
                continue
            data = src.read(info)
            dst.writestr(info, data)
            if not info.is_dir():
                lines.append(_record_line(info.filename, data))
        dst.writestr(record_name, "\n".join([*lines, f"{record_name},,"]) + "\n")
    return target


def _download(spec: str, dest: Path) -> Path:
    """Downloads one wheel for the GPU machine's Python into ``dest`` (a folder of its own) and returns it."""
    before = set(dest.iterdir())
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(dest), spec]
    subprocess.run(cmd, check=True)
    (wheel,) = set(dest.iterdir()) - before
    return wheel


def fetch(dest: Path, version: str) -> list[Path]:
    """Downloads and trims the wheels into ``dest``; fails when they would not fit the carry limit."""
    dest.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        flashinfer = _download(f"flashinfer-python=={version}", Path(tmp))
        with zipfile.ZipFile(flashinfer) as z:
            meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        tvm = next(line.split(":", 1)[1].strip() for line in meta.splitlines()
                   if line.startswith("Requires-Dist: apache-tvm-ffi") and "extra" not in line)
        wheels = [trim(flashinfer, dest), Path(shutil.copy(_download(tvm.replace(" ", ""), Path(tmp)), dest))]
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:6.1f} MiB  {w}")
    if total > CARRY_LIMIT:
        raise SystemExit(f"{total / 2**20:.1f} MiB: over the {CARRY_LIMIT >> 20} MiB the device tool carries")
    return wheels


def install(wheels: Path = WHEELS, site: Path = SITE) -> str | None:
    """Installs ``wheels/*.whl`` into ``site`` (no index, no dependencies) when FlashInfer does not import,
    and puts ``site`` on PYTHONPATH for this process's children; returns what it did, or None."""
    import importlib.util

    if importlib.util.find_spec("flashinfer") is not None or not list(wheels.glob("flashinfer_python-*.whl")):
        return None
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(site), *map(str, wheels.glob("*.whl"))], check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(site))
    return f"FlashInfer installed from {wheels} into {site}"


def _curand_include() -> str | None:
    """The folder of curand.h when the CUDA toolkit lacks it (FlashInfer's sampling header includes it): the
    nvidia-curand wheel that torch's CUDA build depends on ships it."""
    from flashinfer.jit.cpp_ext import get_cuda_path

    if (Path(get_cuda_path()) / "include" / "curand.h").exists():
        return None
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(base).glob("**/include/curand.h"))
        if found:
            return str(found[0].parent)
    return None


def compile_modules(arch: str) -> None:
    """Compiles (or finds compiled) FlashInfer's sampling and top-k modules for ``arch`` ("9.0")."""
    os.environ["FLASHINFER_CUDA_ARCH_LIST"] = arch
    curand = _curand_include()
    if curand:
        os.environ["CPATH"] = os.pathsep.join(filter(None, [curand, os.environ.get("CPATH")]))
    from flashinfer.jit.sampling import gen_sampling_module
    from flashinfer.jit.topk import gen_topk_module

    for gen in (gen_sampling_module, gen_topk_module):
        gen().build_and_load()


def warm_up(capability: tuple[int, int], log: Path) -> subprocess.Popen:
    """Starts ``compile_modules`` for this GPU in the background, output to ``log``."""
    return subprocess.Popen([sys.executable, __file__, "warm-up", "--arch", f"{capability[0]}.{capability[1]}"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("fetch", help="download and trim the wheels into .whl/ (needs network)")
    get.add_argument("--version", default="0.7.4", help="flashinfer-python version")
    get.add_argument("--dest", type=Path, default=WHEELS)
    warm = sub.add_parser("warm-up", help="compile FlashInfer's sampling and top-k modules (on the GPU machine)")
    warm.add_argument("--arch", required=True, help='compute capability, e.g. "9.0"')
    args = parser.parse_args(argv)
    if args.command == "fetch":
        fetch(args.dest, args.version)
    else:
        compile_modules(args.arch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
