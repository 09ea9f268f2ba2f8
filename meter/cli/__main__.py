"""`python -m meter.cli`: the flops-meter command line."""

import sys

from meter.cli import main

sys.exit(main())
