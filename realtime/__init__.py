"""The real-time half: the ONNX policy step (export, runtime), the fixed-rate control loop.

ZeroMQ experience and weight channels and the actor/learner processes come next.
"""
