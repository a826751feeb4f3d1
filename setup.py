"""Packaging. `kernels/` is installed as `exvae_fast.kernels` (design card layout)."""
from setuptools import find_packages, setup

packages = find_packages(include=["exvae_fast", "exvae_fast.*"]) + ["exvae_fast.kernels"]

setup(
    packages=packages,
    package_dir={"exvae_fast.kernels": "kernels"},
    package_data={"exvae_fast.data": ["*.npz"]},
    include_package_data=True,
)
