"""`python -m dint.train` and `torchrun ... -m dint.train`: the same as `dint train`."""

import sys

from dint.commands.train import main

sys.exit(main())
