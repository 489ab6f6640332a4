"""`python -m jax_symm.info`."""

from . import main

main()
