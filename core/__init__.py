"""Domain-free Mamba model code: selective-scan ops, blocks, models and generation.

Layers import downward only: `core.ops` -> `core.modules` -> `core.models` -> `core.generation`.
"""

__version__ = "0.1.0"
