"""`python -m credo ...` = `credo ...`; the form torchrun launches:

    torchrun --nproc_per_node 2 -m credo train --preset tiny --dist.strategy ddp
"""

import sys

from credo.cli import main

sys.exit(main())
