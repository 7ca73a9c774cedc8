"""The end-to-end jobs: ``infogeo analyse``, ``infogeo verify`` and the CLI that runs them.

They are the only code that imports both ``infogeo`` (the geometry) and the rest of ``tiling``
(the adaptive layers), so they sit at the top of the stack, inside the top package: the import
graph runs ``infogeo`` → ``tiling`` → ``tiling.workflows`` and never back (docs/architecture.md).
Nothing is imported here, so ``import tiling`` stays light.
"""
