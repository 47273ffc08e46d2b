"""Dunning."""
