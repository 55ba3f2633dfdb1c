WORKER_PRELOAD = ("stream_processor.fitting", "stream_processor.pipeline")
"""What the forkserver of this package's worker processes (the SQLite writer, the refit worker,
the faust runtime's scoring process) imports once: each worker then starts in milliseconds.
Every worker passes the same, whichever starts the forkserver first."""
