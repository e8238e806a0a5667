"""Modelling code that tiny test checkpoints *ship with* (``auto_map`` in their config.json).

:func:`tests.tiny_models.build_tiny_remote_llada` copies these files into a model folder, so loading that folder
needs ``trust_remote_code`` exactly as a real LLaDA checkpoint from the Hub does. Nothing in ``sri`` imports them
for inference; transformers loads the copies from the model folder.
"""
