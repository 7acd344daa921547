"""Finding the installed console scripts for tests that start several processes."""

import shutil
import sys
from pathlib import Path

import pytest


def console_script(name: str) -> str:
    """Path of the installed `name` script. Lightning's launcher starts the extra ranks by re-running
    sys.argv, so a multi-process test must run the script itself (not `python -c`)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e .)")
    return found
