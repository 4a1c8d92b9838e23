"""Placeholder weights (replaced by tools/train_csa.py)."""
import numpy as np
from mmstream.kernels.csa import N_DYNAMIC, N_STATIC
WEIGHTS = np.zeros(N_DYNAMIC + N_STATIC)
for s in range(4):
    WEIGHTS[s * 7 + 3] = 1.0
WEIGHTS[N_DYNAMIC + 1] = -0.5
