"""Sparse decode attention: Double Sparsity's offline channel calibration (``calibration``).

The kernels live in ``serving/kernels`` (``sparse_decode.py``, ``sparse_reference.py``).
"""
