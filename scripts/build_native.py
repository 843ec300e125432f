"""Compile the hot pure modules with mypyc (`make install` runs this).

    .venv/bin/python scripts/build_native.py [--force]

For each package of `pipelines.native.COMPILED`, the listed modules are
type-checked and compiled as one group into `<package>/_native/`, with the
SHA-256 of every source compiled. A build that is up to date is left alone. The
package uses the build only while those digests match its sources
(`pipelines.native`), so after an edit it runs as Python until this runs again.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines import native


def build(package: str, modules: tuple[str, ...], work: Path) -> Path:
    """Compile `modules` of `package`; returns the folder holding the built extensions."""
    with warnings.catch_warnings():  # mypyc still imports distutils' sysconfig
        warnings.simplefilter("ignore", DeprecationWarning)
        from mypyc.build import mypycify  # only the build needs mypy
    from setuptools import setup

    package_path = Path(*package.split("."))
    sources = [str(package_path / f"{m}.py") for m in modules]
    extensions = mypycify(
        ["--ignore-missing-imports", "--cache-dir", str(work / "mypy-cache"), *sources],
        group_name=f"{package}.native", target_dir=str(work / "c"))
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            setup(name=f"{package}-native", ext_modules=extensions, script_args=[
                "build_ext", "--build-lib", str(work / "lib"), "--build-temp", str(work / "tmp")])
        except SystemExit as exc:  # setuptools reports a failed compile or link so
            raise RuntimeError(f"the C build of {package} failed ({exc}):\n{log.getvalue()}") \
                from None
    return work / "lib" / package_path


def install(package: str, built: Path, digests: dict[str, str]) -> Path:
    """Replace the package's build folder with the new extensions and their digests."""
    target = native.build_dir(ROOT / Path(*package.split(".")))
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for extension in built.iterdir():
        shutil.copy2(extension, staging / extension.name)
    (staging / native.DIGESTS_FILE).write_text(json.dumps(digests, indent=1) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Compile the hot pure modules with mypyc (pipelines.native.COMPILED).")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args()
    for package, modules in native.COMPILED.items():
        package_dir = ROOT / Path(*package.split("."))
        if not args.force and native.fresh_build(package, package_dir) is not None:
            print(f"native: {package} is up to date")
            continue
        # digests of what is compiled, taken first: an edit made during the build is stale
        digests = native.source_digests(package_dir, modules)
        started = time.monotonic()
        print(f"native: compiling {package} ({', '.join(modules)}) with mypyc ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="evguard-native-") as work:
            try:
                built = build(package, modules, Path(work))
            except RuntimeError as exc:
                print(f"native: {exc}", file=sys.stderr)
                return 1
            target = install(package, built, digests)
        print(f"native: {package} built in {time.monotonic() - started:.0f} s -> "
              f"{target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
