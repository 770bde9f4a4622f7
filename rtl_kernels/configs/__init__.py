"""Launch-config tables for the Triton kernels (JSON data, written by ``rtl-kernels tune``)."""
