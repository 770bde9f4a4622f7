"""The ``rtl-kernels`` command line."""
