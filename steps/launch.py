"""Container launcher of the processing steps: ``python3 <code>/steps/launch.py steps.<name> [args…]``.

The code arrives as a processing input, not installed: put it on the path, make the bundled wheels of the few
libraries the image may lack importable (never pip, never replacing the image's own; see steps/vendor), then run
the step module as ``python -m`` would. Standard library only, so it runs on any Python 3 image.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

CODE = Path(__file__).resolve().parent.parent


def main() -> None:
    if len(sys.argv) < 2 or not sys.argv[1].startswith("steps."):
        sys.exit("usage: launch.py steps.<name> [args…]")
    module, args = sys.argv[1], sys.argv[2:]
    sys.path.insert(0, str(CODE))
    from steps.vendor import use

    use()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
