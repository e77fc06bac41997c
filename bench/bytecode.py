"""Compiling the package's bytecode before a benchmark times whole commands.

pip compiles every module of a regular install, so a deployed command starts from bytecode.
An editable install compiles on first import and caches the result, unless
``PYTHONDONTWRITEBYTECODE`` is set, in which case every run compiles every module again and
the figures would time the compiler rather than the command.
"""

from __future__ import annotations

import compileall

import lightspeed_collector
import lightspeed_collector.plugins


def compile_package() -> None:
    for package in (lightspeed_collector, lightspeed_collector.plugins):
        for folder in package.__path__:
            compileall.compile_dir(folder, quiet=1)
