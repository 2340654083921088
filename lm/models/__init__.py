"""The model ladder (`registry.build_model`). Kept free of imports so that loading a config,
which names model settings, does not import torch."""
