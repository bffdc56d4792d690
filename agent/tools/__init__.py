"""The tools the model can call; each runs in the sandbox over gRPC."""
