"""GLSNet in PyTorch: global shallow branch, local deep branch, GL-Deep Fusion.

Heavy imports (torch) happen in the submodules, so ``import glsnet`` stays cheap.
"""

__version__ = "0.1.0"
