"""`python -m jaxformer.train --config CONFIG --workdir DIR`: the same as `jaxformer train ...`."""

import sys

from jaxformer.cli import main

if __name__ == "__main__":
    sys.exit(main([sys.argv[0], "train", *sys.argv[1:]]))
