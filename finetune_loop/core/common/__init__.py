"""TODO: common package docstring."""
