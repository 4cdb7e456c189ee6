"""TODO: evaluate package docstring."""
