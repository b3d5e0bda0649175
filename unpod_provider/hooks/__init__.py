"""Hooks of the Unpod provider."""
