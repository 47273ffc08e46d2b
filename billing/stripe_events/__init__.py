"""Stripe events."""
