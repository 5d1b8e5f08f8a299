"""fastdrop's backends: ``cpu`` (C++ operators) and the Triton kernels' launcher."""
