"""``python -m neuroforge_lit``: which package is installed, and what it runs on. Hand-written."""

import torch

import neuroforge_lit

print(f"neuroforge-lit {neuroforge_lit.__version__} (torch {torch.__version__}, "
      f"{'CUDA ' + torch.version.cuda if torch.cuda.is_available() else 'CPU'})")
