"""Container launcher of the processing steps: ``python3 <code>/steps/launch.py steps.<name> [args…]``.

The code arrives as a processing input, not installed: put it on the path, install the few pure-Python packages
the image may lack (from the bundle's requirements.txt, only when one is missing), then run the step module as
``python -m`` would. Standard library only, so it runs on any Python 3 image.
"""

from __future__ import annotations

import importlib.util
import runpy
import subprocess
import sys
from pathlib import Path

CODE = Path(__file__).resolve().parent.parent
NEEDED = ("yaml", "jsonschema", "rich")  # what the processing steps import beyond the standard library


def main() -> None:
    if len(sys.argv) < 2 or not sys.argv[1].startswith("steps."):
        sys.exit("usage: launch.py steps.<name> [args…]")
    module, args = sys.argv[1], sys.argv[2:]
    sys.path.insert(0, str(CODE))
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    requirements = CODE / "requirements.txt"
    if missing and requirements.is_file():
        print(f"launch: {', '.join(missing)} missing from the image; installing {requirements}", flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "-r", str(requirements)])
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
