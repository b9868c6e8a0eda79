"""`python -m open_vlm.extract --config X.yaml` (also under torchrun): see `open_vlm/extract/run.py`."""

import sys

from open_vlm.extract.run import main

sys.exit(main())
