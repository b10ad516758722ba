"""ganforge.quality."""
