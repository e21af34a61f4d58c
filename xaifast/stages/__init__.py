"""Stages of the explain pipeline that can run outside the model's loop (encoding, writing)."""
