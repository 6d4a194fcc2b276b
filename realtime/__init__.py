"""Real-time half: ONNX policy step, fixed-rate control loop, ZeroMQ channels (coming with later issues)."""
