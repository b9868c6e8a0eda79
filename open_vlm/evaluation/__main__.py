"""`python -m open_vlm.evaluation --config X.yaml`: same as `open-vlm eval`."""

import sys

from open_vlm.evaluation.run import main

sys.exit(main())
