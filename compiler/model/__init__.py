"""spec -> ``torch.nn.Module``: the layer registry and builders, the exported preprocessing, the head."""
