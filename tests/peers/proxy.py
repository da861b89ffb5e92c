"""Placeholder: fixture module for the proxy peer (filled in by its owner)."""
