"""`python -m distill ...` (and `torchrun -m distill run ...`) is the same as `distill ...`."""
from .cli import main

main()
