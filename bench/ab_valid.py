"""Two versions of the C line check (``shardclaim/_valid.c``) side by side in one process.

    python bench/ab_valid.py [--base REV] [--new REV] [--mb 128] [--rounds 8] [--dir DIR]

Compiles ``shardclaim/_valid.c`` as it is at ``--base`` (default ``HEAD``) and at ``--new`` (default: the
working tree) into two modules of their own, then walks the same buffers with each in turn, round by
round: the first ``--mb`` MiB of ~470-byte records and of ~10 KB ones (generated and cached in DIR as
bench/build_speed.py does). Prints each one's median time and the median over rounds of base/new (above
1: the new one is faster). On this project's VM, medians from separate runs swing by 20 % within
minutes; alternating in one process is what tells a change of a few per cent from the machine's mood.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import ModuleType

from build_speed import BENCH_DIR, input_file

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "shardclaim/_valid.c"


def source_at(rev: str | None) -> str:
    if rev is None:
        return (ROOT / SOURCE).read_text()
    git = shutil.which("git") or "git"
    return subprocess.run(
        [git, "-C", str(ROOT), "show", f"{rev}:{SOURCE}"], check=True, capture_output=True, text=True
    ).stdout


def compiled(source: str, name: str, directory: Path) -> ModuleType:
    """``source`` built as module ``name`` with the interpreter's own flags for extensions."""
    source = source.replace("PyInit__valid", f"PyInit_{name}").replace('"shardclaim._valid",', f'"{name}",')
    c = directory / f"{name}.c"
    c.write_text(source)
    so = directory / (name + str(sysconfig.get_config_var("EXT_SUFFIX")))
    flags = str(sysconfig.get_config_var("CFLAGS") or "").split()
    include = sysconfig.get_paths()["include"]
    cc = shutil.which("cc") or "cc"
    subprocess.run([cc, *flags, "-shared", "-fPIC", f"-I{include}", str(c), "-o", str(so)], check=True)
    spec = importlib.util.spec_from_file_location(name, so)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision of the base version")
    parser.add_argument(
        "--new", default=None, help="git revision of the new version (default: the working tree)"
    )
    parser.add_argument("--mb", type=int, default=128, help="MiB of each kind of records to walk")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=BENCH_DIR)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = compiled(source_at(args.base), "_valid_base", Path(tmp))
        new = compiled(source_at(args.new), "_valid_new", Path(tmp))
    for label, src in (
        ("470-byte records", input_file(args.dir, 1024, "small")),
        ("10 KB records", input_file(args.dir, 1024)),
    ):
        with src.open("rb") as f:
            data = f.read(args.mb << 20)
        data = data[: data.rindex(b"\n") + 1]
        times: dict[str, list[float]] = {"base": [], "new": []}
        for _ in range(args.rounds):
            for name, module in (("base", base), ("new", new)):
                t = time.perf_counter()
                if module.first_unsure(data, 0, len(data)) != len(data):
                    raise SystemExit(f"{name} refused a line of {src.name}")
                times[name].append(time.perf_counter() - t)
        ratio = statistics.median(b / n for b, n in zip(times["base"], times["new"], strict=True))
        mb = len(data) / 1e6
        print(f"{label}: base {mb / statistics.median(times['base']):6.0f} MB/s, "
              f"new {mb / statistics.median(times['new']):6.0f} MB/s, base/new {ratio:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
