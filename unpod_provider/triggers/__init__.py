"""Triggers of the Unpod provider."""
