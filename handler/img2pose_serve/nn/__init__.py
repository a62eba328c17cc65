"""The network: FasterDoFRCNN built from torchvision's detection classes, its checkpoints and pose geometry.

Imports nothing of ``protocol`` or ``runtime``.
"""
