"""``python -m cfgdiff``: the same as the ``cfgdiff`` console script."""

import sys

from cfgdiff.cli import main

sys.exit(main())
