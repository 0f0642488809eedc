"""Drop the bitsandbytes native libraries a CUDA machine will not load, so the wheel travels light.

    python bench/gpu_slim_wheel.py .whl/bitsandbytes-0.50.2-*.whl 130 132   # keep the CUDA 13.0/13.2 builds
    python bench/gpu_slim_wheel.py .whl/bitsandbytes-0.50.2-*.whl all       # keep everything

bitsandbytes loads `libbitsandbytes_cuda<XYZ>.so` for the CUDA version torch was built with
(`torch.version.cuda`), and ships one per CUDA, ROCm and XPU release: 125 MB unpacked, 43 MB packed.
The wheel is rewritten in place with its RECORD updated; everything that is not such a library stays.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

NATIVE = re.compile(r"^bitsandbytes/libbitsandbytes_(cuda(\d+)|rocm\d+|xpu\d+)\.so$")


def kept(name: str, cuda: set[str]) -> bool:
    match = NATIVE.match(name)
    return not match or (match.group(2) is not None and match.group(2) in cuda)


def slim(wheel: Path, cuda: set[str]) -> tuple[int, int]:
    """Rewrite `wheel` with only the CUDA builds in `cuda`; (bytes before, bytes after)."""
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if not kept(info.filename, cuda):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if kept(line.split(",", 1)[0], cuda)).encode()
            dst.writestr(info, data)
    tmp.replace(wheel)
    return before, wheel.stat().st_size


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    wheel, versions = Path(argv[0]), set(argv[1:])
    if "all" in versions:
        return 0
    before, after = slim(wheel, versions)
    print(f"{wheel.name}: kept CUDA {' '.join(sorted(versions))}, {before / 1e6:.0f} MB -> {after / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
