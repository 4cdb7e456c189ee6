"""TODO: monitor package docstring."""
