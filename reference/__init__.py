"""Reference PyTorch SHARP: image -> preprocess -> model -> Gaussians -> PLY / render.

Installed as ``sharp_export.reference`` (setuptools package-dir maps this folder into the namespace).
"""
