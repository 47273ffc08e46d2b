"""The service's own events: what changed, told to the company's app (API and webhooks)."""
