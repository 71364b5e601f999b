"""Research experiments, analyses, sweeps and the prompt corpus (not part of the installed package)."""
