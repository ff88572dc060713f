"""Peers the plant is measured against side by side (``python -m bench peer``)."""
