"""ganforge.data."""
