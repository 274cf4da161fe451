"""Platform wheels that carry the compiled llama-server payloads.

Everything else about the package is in pyproject.toml; this file only adds two build steps.
``build_py`` fetches the console's chart library (``gateway.console_assets``) and compiles the
payloads when the tree has none (an sdist, or a fresh clone: about 6
minutes, cached by source digest under ``$SWITCHBOARD_CACHE_DIR`` or ``~/.cache/switchboard``;
``$SWITCHBOARD_VARIANTS`` picks them, default ``cpu cpu_avx2``). ``bdist_wheel`` tags the wheel
for this platform, since it carries native executables (``py3-none-<platform>``: no Python ABI
is involved).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithPayloads(build_py):
    def run(self) -> None:
        if self.editable_mode:
            # An editable install serves runner/payloads from the tree, which
            # `switchboard build-runners` (the Makefile's next step) fills; compiling here, inside
            # pip's isolated build environment, would hide six minutes behind one pip line.
            super().run()
            return
        sys.path.insert(0, str(ROOT))
        from gateway import console_assets
        from runner.build import DEFAULT_VARIANTS, build_runners
        from runner.payloads import packaged_variants

        cache = Path(os.environ.get("SWITCHBOARD_CACHE_DIR")
                     or Path.home() / ".cache/switchboard")
        if not packaged_variants():
            build_runners(cache, os.environ.get("SWITCHBOARD_VARIANTS", "").split()
                          or list(DEFAULT_VARIANTS))
        if not console_assets.present():  # the console's chart library, from npm
            console_assets.fetch(cache)
        super().run()


class WithExecutables(Distribution):
    """Native code inside: the files belong in platlib, the wheel to one platform."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    def get_tag(self) -> tuple[str, str, str]:
        _python, _abi, platform = super().get_tag()
        return "py3", "none", platform


setup(
    distclass=WithExecutables,
    cmdclass={"build_py": BuildWithPayloads, "bdist_wheel": PlatformWheel},
)
