"""Tasks of the `mail` queue (Flask-Mail). The worker runs and consumes this queue now;
the email jobs land with the documents issue, and until their handlers exist no service
records a job for this queue."""
