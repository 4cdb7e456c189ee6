"""TODO: ship package docstring."""
