"""Triton kernels of exvae-fast, one file per op (installed as `exvae_fast.kernels`)."""
