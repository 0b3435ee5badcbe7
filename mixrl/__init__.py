"""mixrl."""
