"""Triton kernels of fastdrop (installed as ``fastdrop.kernels``)."""
