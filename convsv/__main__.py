"""``python -m convsv``: the ``convsv`` command (see :mod:`convsv.cli`)."""

import sys

from .cli import main

sys.exit(main())
