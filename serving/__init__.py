"""A TensorFlow-Serving-compatible server (gRPC + REST), its client, and the model store it reads."""
