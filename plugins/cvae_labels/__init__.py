"""Placeholder: label and vector conditioning (being written)."""
