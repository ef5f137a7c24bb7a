"""Placeholder: the bundled digits dataset (being written)."""
