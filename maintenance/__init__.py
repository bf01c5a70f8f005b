"""Maintenance rules, tickets and the crews' web app (later issues)."""
