"""ganforge.serve."""
