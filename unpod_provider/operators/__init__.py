"""Operators of the Unpod provider."""
