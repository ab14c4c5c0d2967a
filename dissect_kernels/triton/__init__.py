"""Triton kernels (triton==3.6.0). Tests run them under TRITON_INTERPRET=1 on CPU tensors."""
