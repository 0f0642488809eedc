"""gpu_slim_wheel.py keeps only the bitsandbytes CUDA builds asked for, and a RECORD that pip installs from."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from gpu_slim_wheel import slim  # noqa: E402

FILES = ["bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so", "bitsandbytes/libbitsandbytes_cuda128.so",
         "bitsandbytes/libbitsandbytes_cuda130.so", "bitsandbytes/libbitsandbytes_rocm64.so",
         "bitsandbytes/libbitsandbytes_xpu2025.so"]
DIST = "bitsandbytes-0.50.2.dist-info"


def fake_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name in FILES:
            z.writestr(name, "x" * 100)
        z.writestr(f"{DIST}/METADATA", "Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.50.2\n")
        z.writestr(f"{DIST}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: py3-none-any\n")
        z.writestr(f"{DIST}/RECORD", "".join(f"{n},,\n" for n in [*FILES, f"{DIST}/METADATA", f"{DIST}/WHEEL",
                                                                     f"{DIST}/RECORD"]))
    return path


def test_only_the_asked_cuda_builds_stay_and_pip_installs_the_result(tmp_path):
    wheel = fake_wheel(tmp_path / "bitsandbytes-0.50.2-py3-none-any.whl")
    slim(wheel, {"130"})
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        record = z.read(f"{DIST}/RECORD").decode()
    assert {n for n in FILES if n in names} == {"bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so",
                                                 "bitsandbytes/libbitsandbytes_cuda130.so"}
    assert "cuda128" not in record and "rocm" not in record and "cuda130" in record
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(target), str(wheel)], check=True)
    assert sorted(p.name for p in (target / "bitsandbytes").iterdir()) == [
        "__init__.py", "libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"]
