"""Placeholder: fixture module for the imds peer (filled in by its owner)."""
