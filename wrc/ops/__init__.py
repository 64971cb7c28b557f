"""Pure-PyTorch reference operators: the CPU fallback and the test oracle for torch_wrc."""
