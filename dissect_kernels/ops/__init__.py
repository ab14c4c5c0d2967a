"""Public ops: each validates its inputs, picks a backend and calls it."""
