"""The arena's web layer: FastAPI app, Gradio pages and the JSON API."""
