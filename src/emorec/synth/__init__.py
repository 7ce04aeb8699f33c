"""Synthetic training faces: generation backends, prompt bookkeeping, quality filters, merge.

Entry point :func:`emorec.synth.pipeline.run_synth`; see ``stages/synth.py``.
"""
