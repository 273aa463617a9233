"""`python -m jaxdiff.prepare NAME... [--data_dir=DIR]`: the command of `jaxdiff.data.prepare`."""

import sys

from jaxdiff.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
