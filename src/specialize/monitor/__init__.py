"""Monitoring: what a served model was asked and how it answered (`request_log.py`); drift and reports grow here."""
