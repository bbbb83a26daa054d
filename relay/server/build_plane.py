"""Build relay/server/_plane.c into an extension module beside it (`make venv` runs this).

The build needs only gcc and the Python headers (both on the machines this runs on); no setuptools
step, so `uv sync` stays a plain install. Without the module the relay runs its asyncio data plane.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

SOURCE = Path(__file__).with_name("_plane.c")
HEADERS = [SOURCE.with_name("_uring.h")]  # shared with bench/_floor_native.c
TARGET = SOURCE.with_name("_plane" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))


def build(force: bool = False) -> Path:
    newest = max(p.stat().st_mtime for p in (SOURCE, *HEADERS))
    if not force and TARGET.exists() and TARGET.stat().st_mtime >= newest:
        return TARGET
    cc = sysconfig.get_config_var("CC") or "gcc"
    cmd = [*cc.split()[:1], "-O2", "-g", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers",
           "-fPIC", "-shared", "-pthread", f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o",
           str(TARGET) + ".tmp", "-ldl"]
    subprocess.run(cmd, check=True)
    Path(str(TARGET) + ".tmp").replace(TARGET)
    return TARGET


if __name__ == "__main__":
    print(build(force="--force" in sys.argv))
