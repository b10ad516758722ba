"""ganforge.cluster."""
