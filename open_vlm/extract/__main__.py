"""`python -m open_vlm.extract --config X.yaml` (also under torchrun): see `open_vlm/extract/run.py`."""

import sys

from open_vlm.errors import run_main
from open_vlm.extract.run import main

sys.exit(run_main(main))
