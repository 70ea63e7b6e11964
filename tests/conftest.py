"""One torch thread per test process: on a shared 2-core machine more threads spin and slow down."""

import torch

torch.set_num_threads(1)
