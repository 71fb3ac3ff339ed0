"""``python -m kws``: the ``kws`` command without an installed entry point (a bare GPU image)."""

import sys

from kws.cli import main

sys.exit(main())
