"""The experts. Every module here is imported by the registry; each registers one expert backend."""
