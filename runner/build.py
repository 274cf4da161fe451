"""`switchboard build-runners`: compile llama-server payloads from the pinned llama.cpp source.

The source is the llama.cpp tree vendored in the ``llama-cpp-python`` sdist from PyPI, pinned
here by version and sha256 (the one place). Every variant is built in one CMake tree, so the
second variant recompiles only what its CPU flags change (the ggml CPU backend), and finished
binaries are cached by a key over source digest, variant flags and compiler, so a fresh
checkout on the same machine copies instead of compiling.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner import source_patches
from runner.payloads import BINARY, PACKAGE_PAYLOADS, platform_dir

log = logging.getLogger(__name__)

# A variant's compile progress: (variant, steps done, steps in all), from ninja's "[n/m]" (or
# make's "[ n%]", out of 100) at the start of a build line.
Progress = Callable[[str, int, int], None]
_STEP = re.compile(rb"^\[(\d+)/(\d+)\]|^\[\s*(\d+)%\]")


def build_step(line: bytes) -> tuple[int, int] | None:
    """(done, total) if ``line`` is a build tool's progress line."""
    match = _STEP.match(line)
    if match is None:
        return None
    if match[3] is not None:
        return int(match[3]), 100
    return int(match[1]), int(match[2])

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_PYTHON_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"

# Static, self-contained, and nothing fetched at build time: no curl/openssl, no web UI
# download, no OpenMP runtime to ship, libstdc++ linked in so the payload runs on any glibc
# Linux the compiler's glibc supports.
COMMON_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=OFF",
    "-DGGML_OPENMP=OFF",
    "-DGGML_CCACHE=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DCMAKE_EXE_LINKER_FLAGS=-static-libgcc -static-libstdc++",
)
_X86_ISA = ("SSE42", "AVX", "AVX2", "BMI2", "FMA", "F16C", "AVX512")


def _isa(enabled: set[str]) -> tuple[str, ...]:
    return tuple(f"-DGGML_{name}={'ON' if name in enabled else 'OFF'}" for name in _X86_ISA)


# Keep in step with runner.variants.CPU_REQUIREMENTS.
CPU_VARIANT_FLAGS: dict[str, tuple[str, ...]] = {
    "cpu": (*_isa(set()), "-DGGML_CUDA=OFF"),
    "cpu_avx2": (*_isa({"SSE42", "AVX", "AVX2", "BMI2", "FMA", "F16C"}), "-DGGML_CUDA=OFF"),
}
DEFAULT_VARIANTS = ("cpu", "cpu_avx2")


class BuildError(RuntimeError):
    """A payload could not be built; the message says which step and why."""


@dataclass(frozen=True)
class Variant:
    name: str
    flags: tuple[str, ...]


def cuda_variant() -> Variant | None:
    """``cuda_v<major>`` when nvcc is installed, else None."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    marker = "release "
    if marker not in out:
        return None
    major = out.split(marker, 1)[1].split(".", 1)[0]
    return Variant(f"cuda_v{major}", (*_isa({"SSE42", "AVX", "AVX2", "FMA", "F16C"}),
                                       "-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=native"))


def resolve_variants(names: list[str]) -> list[Variant]:
    """Variant specs for names; ``cuda`` means this machine's CUDA toolkit version."""
    out: list[Variant] = []
    for name in names:
        if name in CPU_VARIANT_FLAGS:
            out.append(Variant(name, CPU_VARIANT_FLAGS[name]))
        elif name == "cuda" or name.startswith("cuda_v"):
            cuda = cuda_variant()
            if cuda is None:
                raise BuildError("a CUDA variant was asked for but nvcc is not on PATH")
            out.append(cuda)
        else:
            raise BuildError(f"unknown variant {name!r}; known: cpu, cpu_avx2, cuda")
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _compiler_id() -> str:
    try:
        return subprocess.run(["cc", "--version"], capture_output=True, text=True,
                              check=False).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def cache_key(variant: Variant) -> str:
    material = json.dumps(
        [LLAMA_CPP_PYTHON_SHA256, variant.name, COMMON_FLAGS, variant.flags, _compiler_id(),
         source_patches.digest()]
    )
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def fetch_sdist(cache_dir: Path) -> Path:
    """The pinned sdist, downloaded with pip (so mirrors and proxies apply) and verified."""
    target = cache_dir / "sources" / SDIST_NAME
    if target.is_file() and _sha256(target) == LLAMA_CPP_PYTHON_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-d", tmp,
               f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"]
        log.info("downloading llama-cpp-python %s sdist", LLAMA_CPP_PYTHON_VERSION)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = Path(tmp) / SDIST_NAME
        if result.returncode != 0 or not got.is_file():
            raise BuildError(f"pip download failed:\n{result.stderr[-2000:]}")
        digest = _sha256(got)
        if digest != LLAMA_CPP_PYTHON_SHA256:
            raise BuildError(f"{SDIST_NAME} sha256 is {digest}, expected {LLAMA_CPP_PYTHON_SHA256}")
        got.replace(target)
    return target


def unpack_source(sdist: Path, cache_dir: Path) -> Path:
    """The vendored llama.cpp tree, unpacked once per source digest, with our patches
    (``runner.source_patches``) applied."""
    root = cache_dir / "src" / LLAMA_CPP_PYTHON_SHA256[:16]
    source = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    done = root / ".unpacked"
    # A tree patched by another version of our patches is unpacked afresh: the archive's own
    # times come back with it, so only the files patched anew are recompiled.
    if done.is_file() and source.is_dir() and not source_patches.patched_otherwise(source):
        _patch(source)
        return source
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(root, filter="data")
    if not (source / "CMakeLists.txt").is_file():
        raise BuildError(f"{sdist.name} has no vendored llama.cpp at {source}")
    done.touch()
    _patch(source)
    return source


def _patch(source: Path) -> None:
    try:
        source_patches.apply(source)
    except source_patches.PatchError as exc:
        raise BuildError(str(exc)) from exc


def _tool(name: str) -> str | None:
    """A build tool, preferring the copy installed beside this interpreter (the venv)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


def _run(cmd: list[str], log_file: Path, progress: Callable[[int, int], None] | None = None
         ) -> None:
    """Run a build step, its output appended to ``log_file`` line by line (so the log is
    whole if it fails) and its progress lines reported as they come."""
    with log_file.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as child:
            assert child.stdout is not None
            for line in child.stdout:
                out.write(line)
                step = build_step(line) if progress is not None else None
                if step is not None and progress is not None:
                    progress(*step)
            returncode = child.wait()
    if returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-30:]
        raise BuildError(f"{cmd[0]} failed ({returncode}); the whole build log is "
                         f"{log_file}; its last lines:\n" + "\n".join(tail))


def build_log(build_dir: Path) -> Path:
    return build_dir / "build.log"


def compile_variant(source: Path, variant: Variant, build_dir: Path, jobs: int,
                    progress: Progress | None = None) -> Path:
    """Configure and build llama-server for one variant; returns the binary."""
    build_dir.mkdir(parents=True, exist_ok=True)
    log_file = build_log(build_dir)
    cmake = _tool("cmake")
    if cmake is None:
        raise BuildError("cmake not found: pip install 'switchboard[build]' or install cmake")
    ninja = _tool("ninja")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    _run([cmake, "-S", str(source), "-B", str(build_dir), *generator,
          *COMMON_FLAGS, *variant.flags], log_file)
    steps = None if progress is None else (
        lambda done, total: progress(variant.name, done, total))
    _run([cmake, "--build", str(build_dir), "--target", BINARY, "-j", str(jobs)], log_file,
         steps)
    binary = build_dir / "bin" / BINARY
    if not binary.is_file():
        raise BuildError(f"build finished but {binary} is missing")
    return binary


def _install(cached: Path, meta: dict[str, object], dest_root: Path, name: str) -> Path:
    dest = dest_root / platform_dir() / name
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, dest / f"{BINARY}.gz")
    (dest / "build.json").write_text(json.dumps(meta, indent=2) + "\n")
    return dest / f"{BINARY}.gz"


def build_runners(
    cache_dir: Path,
    names: list[str],
    dest_root: Path = PACKAGE_PAYLOADS,
    jobs: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> list[Path]:
    """Build (or take from cache) each named variant and install it as a package payload,
    telling ``progress`` how each compile goes."""
    variants = resolve_variants(names)
    jobs = jobs or os.cpu_count() or 2
    installed: list[Path] = []
    source: Path | None = None
    for variant in variants:
        key = cache_key(variant)
        meta: dict[str, object] = {"variant": variant.name, "key": key,
                "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION, "flags": list(variant.flags)}
        current = dest_root / platform_dir() / variant.name / "build.json"
        cached = cache_dir / "payloads" / key / f"{BINARY}.gz"
        if not force and current.is_file() and json.loads(current.read_text()).get("key") == key \
                and current.with_name(f"{BINARY}.gz").is_file():
            log.info("%s: payload is current (key %s)", variant.name, key)
            installed.append(current.with_name(f"{BINARY}.gz"))
            continue
        if force or not cached.is_file():
            if source is None:
                source = unpack_source(fetch_sdist(cache_dir), cache_dir)
            started = time.monotonic()
            build_dir = cache_dir / "build" / f"{LLAMA_CPP_PYTHON_SHA256[:16]}-{platform_dir()}"
            log.info("%s: compiling llama-server (%d jobs); build log: %s", variant.name, jobs,
                     build_log(build_dir))
            binary = compile_variant(source, variant, build_dir, jobs, progress)
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".partial")
            with binary.open("rb") as src, gzip.open(partial, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            partial.replace(cached)
            log.info("%s: built in %.0f s", variant.name, time.monotonic() - started)
        else:
            log.info("%s: taken from build cache %s", variant.name, cached.parent)
        installed.append(_install(cached, meta, dest_root, variant.name))
    return installed


def main(argv: list[str] | None = None) -> int:
    """``python -m runner.build [--cache DIR] [VARIANT ...]``: the build with nothing but the
    standard library imported (a Docker build stage or setup.py has no pydantic to load
    settings with); ``switchboard build-runners`` is the same with the settings applied."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runner.build")
    parser.add_argument("variants", nargs="*", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "switchboard")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        for path in build_runners(args.cache, args.variants):
            print(path)
    except BuildError as exc:
        print(f"build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
