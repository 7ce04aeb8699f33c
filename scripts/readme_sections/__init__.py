"""Renderers of the README sections, one module per part of the README: each turns a report's
JSON into markdown; ``scripts/readme_metrics.py`` reads the reports and splices the sections in.
"""
