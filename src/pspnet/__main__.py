"""``python -m pspnet``: the same as the ``pspnet`` command."""

import sys

from pspnet.cli import main

sys.exit(main())
