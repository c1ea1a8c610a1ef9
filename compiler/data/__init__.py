"""Training data: listing and decoding through the runtime loader, the uint8 cache, the split, augmentation.

``loading`` and ``split`` are torch-free (``convspec evaluate RUN`` uses them); ``augment`` is torch.
"""
