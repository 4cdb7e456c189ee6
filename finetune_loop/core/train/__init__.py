"""TODO: train package docstring."""
