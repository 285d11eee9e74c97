"""lmtune studio: a local web app over a runs folder (docs/studio.md). runs.py reads the run folders
(status, summaries, details), jobs.py keeps the queue of runs started from the page (child
processes), forms.py serves the run form (schema, validation, plan, preview), chat.py the chat with a
generative run beside its base, app.py puts them together as a FastAPI app."""
