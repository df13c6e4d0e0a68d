"""jaxsegdepth: foreground mask and depth from a background/composite image pair, in JAX."""
