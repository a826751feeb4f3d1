"""exvae-fast: a fast Exemplar VAE (Norouzi, Fleet & Norouzi, NeurIPS 2020)."""
__version__ = "0.1.0"
