"""Customer emails: one folder of templates per kind, composed into subject, text and HTML."""
