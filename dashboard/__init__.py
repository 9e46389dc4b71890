"""Streamlit dashboard over model_zoo (entry point: dashboard/app.py)."""
