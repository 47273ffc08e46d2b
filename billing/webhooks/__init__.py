"""Outgoing webhooks: the events we send, signed, to the receivers our customers register."""
