"""Outgoing webhooks: endpoints the company's app registers, and signed deliveries to them."""
