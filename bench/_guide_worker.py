"""The guide's `make_celery.py`: the Celery app a worker of the guide-style baseline runs,
`celery -A bench._guide_worker worker` (see bench/_guide_app.py)."""

from bench._guide_app import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
