"""``visionlens serve``: an interactive explorer in the browser (the ``serve`` extra: FastAPI + uvicorn).

:mod:`.explorer` holds the models and does the work (no web code), with :mod:`.similarity` (the
Similarity view), :mod:`.results` (a results folder's images and models, for their maps) and
:mod:`.jobs` (long requests: progress and cancel); :mod:`.safety` checks paths and uploads,
:mod:`.pictures` draws maps for the page, :mod:`.app` is the FastAPI app, :mod:`.page` its one HTML
page and :mod:`.cli` the command."""
