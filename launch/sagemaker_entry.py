"""What SageMaker's torchrun driver runs on every node: `python -m open_vlm.train` from the uploaded source.

The driver takes a script path, not `-m`; this file makes the two the same. The uploaded source goes first
on `sys.path` (ahead of the copy installed in the image), and this folder is taken off it so that
`launch/sagemaker.py` cannot shadow the `sagemaker` package.
"""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    runpy.run_module("open_vlm.train", run_name="__main__", alter_sys=True)
