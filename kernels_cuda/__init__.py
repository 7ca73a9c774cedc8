"""C++ (CPU) and CUDA C++ sources of the adaptive selective scan; built at first use by ``tiling._build``."""
