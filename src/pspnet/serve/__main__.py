"""``python -m pspnet.serve``: points to the command that starts the server."""

import sys

if __name__ == "__main__":  # pragma: no cover
    print("run `pspnet serve --weights DIR`", file=sys.stderr)
    sys.exit(2)
