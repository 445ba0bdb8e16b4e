"""bslrun: run, compare and sweep Bayesian deep learning experiments from one command."""

import time

# Taken before JAX is imported, so timing.startup_s covers the whole start-up.
PROCESS_START = time.time()

__version__ = "0.1.0"
