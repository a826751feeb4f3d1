"""`python -m exvae_fast` is the `exvae` command."""
import sys

from .cli import main

sys.exit(main())
