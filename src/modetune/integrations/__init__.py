"""Integrations with other training libraries (TRL)."""
