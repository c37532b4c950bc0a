"""``visionlens serve``: an interactive explorer in the browser (the ``serve`` extra: FastAPI + uvicorn).

:mod:`.explorer` holds the models and does the work (no web code), :mod:`.safety` checks paths and
uploads, :mod:`.app` is the FastAPI app, :mod:`.page` its one HTML page and :mod:`.cli` the command."""
