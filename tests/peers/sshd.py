"""Placeholder: fixture module for the sshd peer (filled in by its owner)."""
