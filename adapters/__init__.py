"""The edges: one module per outside system (blob storage; runtimes and model adapters to come)."""
