"""Pure-PyTorch oracles: slow, obvious, materialising, exact. Every fast backend is tested
against these."""
