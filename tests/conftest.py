"""Test-wide settings. Runs before any test module imports triton or rnnkernels."""
import os

import torch

# Without a GPU, the Triton kernels run (exactly, slowly) in Triton's CPU interpreter. The flag
# must be set before triton decorates any kernel.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# fp32 comparisons against cuDNN / cuBLAS are made with TF32 off (convention 7).
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
