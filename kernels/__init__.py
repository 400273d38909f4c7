"""effconv's Triton kernels (installed as ``effconv.kernels``).

Each module holds the ``@triton.jit`` kernels of one op and their
launchers; launch configurations are data in ``configs/<op>.json``. Under
``TRITON_INTERPRET=1`` (set before triton is imported) the same kernels run on
CPU tensors, which is how the test suite exercises them without a GPU.
"""
