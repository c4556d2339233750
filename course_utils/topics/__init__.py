"""One module per lesson topic: loaders that choose the full-mode model or its smoke stand-in, and their plumbing."""
