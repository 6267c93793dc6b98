"""embedkit_dense: the dense baseline — the plain SwiGLU MLP and identity routing."""
