"""The northbound REST API (FastAPI)."""
