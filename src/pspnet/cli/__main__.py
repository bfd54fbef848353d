"""``python -m pspnet.cli``: the same as ``pspnet``."""

import sys

from pspnet.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
