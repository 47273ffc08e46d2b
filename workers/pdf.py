"""Tasks of the `pdf` queue (WeasyPrint renders). The worker runs and consumes this queue
now; `pdf.render_invoice` lands with the documents issue, and until its handler exists
no service records a job for this queue."""
