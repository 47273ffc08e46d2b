"""Pure billing rules: no Flask, Celery or SQLAlchemy here."""
