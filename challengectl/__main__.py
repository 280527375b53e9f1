"""`python -m challengectl`."""

from challengectl.cli import main

main()
