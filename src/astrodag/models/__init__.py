"""Model architectures shared by the tracks (import from the submodules: torch loads only when needed)."""
