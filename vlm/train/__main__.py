"""``python -m vlm.train --config FILE`` (one process; torchrun/PyTorchJob start N of them)."""

import sys

from vlm.train.launch import main

if __name__ == "__main__":
    sys.exit(main())
