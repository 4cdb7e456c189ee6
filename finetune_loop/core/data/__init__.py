"""TODO: data package docstring."""
