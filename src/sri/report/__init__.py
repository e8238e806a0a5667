"""Figures (matplotlib, PNG) and reports."""
