"""The REST service and web page: ``create_app`` (FastAPI) and ``normadd serve`` (uvicorn)."""
