"""Inputs: the offline assets (:mod:`.assets`: pinned wheels, sha256, conversion, manifests) and prompt sets
(:mod:`.prompts`: files, offline sets, jailbreak templates)."""
