"""Pieces both halves share: the error type the entry points understand, typed YAML configs,
and atomic file writes."""
