"""`python -m rattn_eval ...` runs the `rattn-eval` command (for a checkout that is not installed)."""

from rattn_eval.cli import main

main()
