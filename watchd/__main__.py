"""`python -m watchd` is the same as `watchd`."""

import sys

from watchd.cli import main

sys.exit(main())
