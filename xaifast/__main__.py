"""`python -m xaifast explain ...` (and `torchrun -m xaifast explain ...`): the command line."""
from .cli import main

raise SystemExit(main())
