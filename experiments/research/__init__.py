"""Research experiments on the harness (see README.md in this folder)."""
