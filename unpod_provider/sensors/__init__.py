"""Sensors of the Unpod provider."""
