"""`python -m open_vlm.evaluation --config X.yaml`: same as `open-vlm eval`."""

import sys

from open_vlm.errors import run_main
from open_vlm.evaluation.run import main

sys.exit(run_main(main))
