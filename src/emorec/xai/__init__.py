"""Explainability: attribution methods, their faithfulness harness, sampling and figures.

- :mod:`emorec.xai.methods`: Grad-CAM, Grad-CAM++, SHAP, LIME behind one ``[H, W]`` interface.
- :mod:`emorec.xai.faithfulness`: deletion/insertion curves and AUCs, random baseline,
  model-parameter randomization check.
- :mod:`emorec.xai.sampling`: the seeded mix of correct and misclassified test images.
- :mod:`emorec.xai.figures`: overlays, comparison grid, curve plot.
- :mod:`emorec.xai.pipeline`: the explain stage end to end.
"""
