"""Run FlashInfer's own sampling tests on CPU tensors against fastsample.flashinfer.

    python tools/flashinfer_tests.py PATH [pytest arguments, e.g. -k freq -x]

PATH is a flashinfer checkout, or its git directory (a bare mirror: the file is read from HEAD). Its
tests/utils/test_sampling.py is read at run time, never copied into this repository: the adapted copy lives in a
temporary folder for the run. The adaptation is textual and small, so what runs is FlashInfer's test logic:

- every CUDA device name becomes "cpu" and ``torch.cuda.synchronize()`` a no-op (the tensors are CPU tensors);
- ``import flashinfer`` imports a two-line package in the temporary folder whose ``sampling`` is
  fastsample.flashinfer.

The backend is fastsample's cpu backend ($FASTSAMPLE_BACKEND=cpu). Prints pytest's summary; the exit status is
pytest's. Several tests draw 5,000,000 samples or loop 1,000-5,000 times over batches of up to 989 x 128256:
a whole run takes long on a small machine, so select with -k while iterating.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_FILE = "tests/utils/test_sampling.py"
SHIM = "from fastsample import flashinfer as sampling  # noqa: F401  (flashinfer.sampling is fastsample's drop-in)\n"


def read_tests(path: Path) -> str:
    """The text of FlashInfer's test_sampling.py from a checkout or a git directory."""
    if (path / TEST_FILE).is_file():
        return (path / TEST_FILE).read_text()
    result = subprocess.run(["git", "--git-dir", str(path), "show", f"HEAD:{TEST_FILE}"], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"{path}: neither a checkout with {TEST_FILE} nor a git directory holding it "
                         f"({result.stderr.strip()})")
    return result.stdout


def to_cpu(source: str) -> str:
    """FlashInfer's CUDA test code -> the same tests on CPU tensors."""
    source = source.replace("torch.cuda.synchronize()", "pass")
    return re.sub(r'"cuda(:0)?"', '"cpu"', source)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    source = to_cpu(read_tests(Path(argv[0])))
    with tempfile.TemporaryDirectory(prefix="flashinfer-tests-") as tmp:
        (Path(tmp) / "flashinfer").mkdir()
        (Path(tmp) / "flashinfer" / "__init__.py").write_text(SHIM)
        (Path(tmp) / "test_sampling.py").write_text(source)
        env = dict(os.environ, FASTSAMPLE_BACKEND="cpu",
                   PYTHONPATH=os.pathsep.join([tmp, str(ROOT), os.environ.get("PYTHONPATH", "")]))
        command = [sys.executable, "-m", "pytest", "test_sampling.py", "-q", "-p", "no:cacheprovider",
                   "--rootdir", tmp, "-c", os.devnull, *argv[1:]]
        return subprocess.run(command, cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
