"""textq benchmark harness: `python -m bench --help`.

Measures, in one run, how close textq gets to the model's own batched speed (raw), end to end in
bulk and one-job-per-request, against a hand-wired Celery task (naive), and with a null model
(queue + database overhead alone). Numbers come from the jobs table's own timestamps.
"""
